import numpy as np

from recsys.distributed.plan_lengths import ranking_lengths, retrieval_lengths


def test_retrieval_rows_hold_a_users_engaged_events_but_the_two_held_out():
    lengths = retrieval_lengths(np.array([5, 2, 100, 3]), max_seq_len=50)
    assert lengths.lengths == (1, 3, 50)  # the user with 2 events has no training row


def test_ranking_rows_see_every_history_length_up_to_the_users_engaged_events():
    lengths = ranking_lengths(np.array([0, 100]), np.array([10, 10]), max_sequence=50)
    values = np.array(lengths.lengths)
    assert values.min() == 0 and values.max() == 50
    assert 0.45 < np.mean(values == 0) < 0.55  # half the rows belong to the user without history
    heavy = ranking_lengths(np.array([0, 100]), np.array([10, 990]), max_sequence=50)
    assert heavy.mean > lengths.mean  # rows are weighted by the user's events
