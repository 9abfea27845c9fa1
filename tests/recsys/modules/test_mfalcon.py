"""M-FALCON scoring: invariance to other candidates, micro-batch size and caching."""

import pytest
import torch

from recsys.errors import ConfigError
from recsys.modules.hstu import HSTUEncoder
from recsys.modules.mfalcon import score_candidates

D = 6


def setup(normalization="length"):
    torch.manual_seed(0)
    encoder = HSTUEncoder(2, D, 2, 3, 4, max_seq_len=12, normalization=normalization).double().eval()
    g = torch.Generator().manual_seed(1)
    history = torch.randn(9, D, generator=g, dtype=torch.float64)
    history_offsets = torch.tensor([0, 4, 4, 9])  # the middle user has no history
    history_ts = torch.randint(0, 10**6, (9,), generator=g).sort().values
    candidates = torch.randn(11, D, generator=g, dtype=torch.float64)
    candidate_offsets = torch.tensor([0, 5, 7, 11])
    candidate_ts = torch.full((11,), 2 * 10**6)
    return encoder, (history, history_offsets, candidates, candidate_offsets), dict(timestamps=history_ts, candidate_timestamps=candidate_ts)


@pytest.mark.parametrize("normalization", ["length", "max_len"])
def test_microbatch_size_and_cache_do_not_change_scores(normalization):
    encoder, args, times = setup(normalization)
    reference = score_candidates(encoder, *args, microbatch_size=5, cache=False, **times)
    assert reference.shape == (11, D)
    for size in (1, 2, 3, 7):
        for cache in (True, False):
            torch.testing.assert_close(score_candidates(encoder, *args, microbatch_size=size, cache=cache, **times), reference)


def test_score_ignores_other_candidates():
    encoder, (history, offsets, candidates, candidate_offsets), times = setup()
    before = score_candidates(encoder, history, offsets, candidates, candidate_offsets, microbatch_size=3, **times)
    changed = candidates.clone()
    changed[[0, 2, 3, 8]] = torch.randn(4, D, dtype=torch.float64)  # user 0's 0, 2, 3 and user 2's 8
    after = score_candidates(encoder, history, offsets, changed, candidate_offsets, microbatch_size=3, **times)
    keep = [1, 4, 5, 6, 7, 9, 10]
    torch.testing.assert_close(after[keep], before[keep])
    assert not torch.allclose(after[[0, 2, 3, 8]], before[[0, 2, 3, 8]])


def test_candidate_alone_scores_the_same():
    encoder, (history, offsets, candidates, candidate_offsets), times = setup()
    together = score_candidates(encoder, history, offsets, candidates, candidate_offsets, microbatch_size=5, **times)
    alone = score_candidates(
        encoder, history, offsets, candidates[[6]], torch.tensor([0, 0, 1, 1]), microbatch_size=1,
        timestamps=times["timestamps"], candidate_timestamps=times["candidate_timestamps"][[6]],
    )
    torch.testing.assert_close(alone[0], together[6])


def test_candidate_has_no_gradient_path_to_another():
    encoder, (history, offsets, candidates, candidate_offsets), times = setup()
    candidates = candidates.clone().requires_grad_()
    out = score_candidates(encoder, history, offsets, candidates, candidate_offsets, microbatch_size=11, **times)
    probe = torch.randn(D, dtype=torch.float64)  # not .sum(): LayerNorm outputs sum to a constant
    (grad,) = torch.autograd.grad((out[1] * probe).sum(), candidates)
    assert grad[1].abs().sum() > 0
    assert grad[[0, *range(2, 11)]].abs().sum() == 0


def test_default_candidate_time_and_limits():
    encoder, args, times = setup()
    out = score_candidates(encoder, *args, microbatch_size=4, timestamps=times["timestamps"])
    assert torch.isfinite(out).all()
    short = HSTUEncoder(1, D, 2, 3, 4, max_seq_len=8).double()  # 5 history + 4 candidates do not fit
    with pytest.raises(ConfigError, match="microbatch_size"):
        score_candidates(short, *args, microbatch_size=4, **times)
    with pytest.raises(ConfigError, match="microbatch_size"):
        score_candidates(encoder, *args, microbatch_size=0, **times)


def non_causal_setup():
    encoder, args, times = setup()
    torch.manual_seed(0)
    encoder = HSTUEncoder(2, D, 2, 3, 4, max_seq_len=12, causal=False).double().eval()
    return encoder, args, times


def test_a_non_causal_encoder_is_refused_with_the_cache_or_shared_passes():
    """The cache and shared micro-batches are exact for causal encoders only; a non-causal one
    would silently get scores that depend on the other candidates."""
    encoder, args, times = non_causal_setup()
    for cache, size in ((True, 1), (True, 3), (False, 3)):
        with pytest.raises(ConfigError, match="not causal.*cache=False, microbatch_size=1"):
            score_candidates(encoder, *args, microbatch_size=size, cache=cache, **times)
    history, offsets = args[0], args[1]
    with pytest.raises(ConfigError, match="causal encoders only"):
        encoder.encode_history(history, offsets, times["timestamps"])


def test_a_non_causal_encoder_scored_one_candidate_per_pass_is_exact():
    """Exact: each candidate's output equals the encoder's on its history plus that candidate alone."""
    encoder, (history, offsets, candidates, candidate_offsets), times = non_causal_setup()
    got = score_candidates(encoder, history, offsets, candidates, candidate_offsets, microbatch_size=1, cache=False, **times)
    history_ts, candidate_ts = times["timestamps"], times["candidate_timestamps"]
    for user in range(3):
        h = slice(int(offsets[user]), int(offsets[user + 1]))
        for c in range(int(candidate_offsets[user]), int(candidate_offsets[user + 1])):
            tokens = torch.cat([history[h], candidates[c : c + 1]])
            alone = encoder(tokens, torch.tensor([0, len(tokens)]), torch.cat([history_ts[h], candidate_ts[c : c + 1]]),
                            num_targets=torch.tensor([1]))
            torch.testing.assert_close(got[c], alone[-1])
