"""The dense estimate against what a real training step does, for every zoo model: the bytes
autograd saves for backward (counted with saved_tensors_hooks, deduped by storage) within 10% at
two batch sizes and two sequence lengths, and the forward + backward FLOPs against
torch.utils.flop_counter.FlopCounterMode."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from recsys.distributed.dense_estimate import Workload, dense_parameters, estimate_dense
from recsys.distributed.probe_workloads import probe_case
from recsys.distributed.saved_tensors import saved_activation_bytes
from recsys.distributed.sequence_lengths import LengthDistribution
from recsys.errors import ConfigError
from recsys.models import get_model, list_models

SMALL = {"hstu": {"embedding_dim": 16, "num_negatives": 8}, "sasrec": {"embedding_dim": 16}}


def _case(name, batch_size, max_len, tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "lifelong"
    return probe_case(name, batch_size, max_len, cache_dir=str(cache), **SMALL.get(name, {"embedding_dim": 16}))


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("batch_size, max_len", [(8, 12), (8, 30), (24, 12), (24, 30)])
def test_activation_estimate_matches_saved_tensors(name, batch_size, max_len, tmp_path_factory):
    case = _case(name, batch_size, max_len, tmp_path_factory)
    measured, by_module = saved_activation_bytes(case.model, case.step)
    estimated = estimate_dense(case.model, case.work).activation_bytes
    assert measured > 0
    assert estimated == pytest.approx(measured, rel=0.10), by_module


NO_DROPOUT = {
    "sasrec": {"embedding_dim": 16, "dropout": 0.0},
    "hstu": {"embedding_dim": 16, "num_negatives": 8, "dropout": 0.0},
    "bst": {"embedding_dim": 16, "bst": {"dropout": 0.0}},
    "transact_v1": {"embedding_dim": 16, "transact_v1": {"dropout": 0.0}},
    "transact_v2": {"embedding_dim": 16, "transact_v2": {"dropout": 0.0}},
}


@pytest.mark.parametrize("name", sorted(NO_DROPOUT))
@pytest.mark.parametrize("batch_size, max_len", [(8, 12), (24, 30)])
def test_activation_estimate_without_dropout_follows_the_fused_attention_kernel(name, batch_size, max_len, tmp_path_factory):
    """Without dropout, scaled_dot_product_attention runs a fused kernel on CPU as on CUDA: no
    [B, H, N, N] tensors are kept, and no dropout masks."""
    cache = tmp_path_factory.getbasetemp() / "lifelong"
    case = probe_case(name, batch_size, max_len, cache_dir=str(cache), **NO_DROPOUT[name])
    measured, by_module = saved_activation_bytes(case.model, case.step)
    assert estimate_dense(case.model, case.work).activation_bytes == pytest.approx(measured, rel=0.10), by_module


@pytest.mark.parametrize("name", list_models())
def test_flop_estimate_matches_the_flop_counter(name, tmp_path_factory):
    case = _case(name, 16, 20, tmp_path_factory)
    with FlopCounterMode(display=False) as counter:
        case.step().backward()
    assert estimate_dense(case.model, case.work).flops == pytest.approx(counter.get_total_flops(), rel=0.05)


def test_activations_grow_with_batch_and_length_and_follow_the_config():
    model = get_model("hstu", device="meta", embedding_dim=64, num_layers=2, max_seq_len=256)
    deeper = get_model("hstu", device="meta", embedding_dim=64, num_layers=4, max_seq_len=256)

    def activations(m, batch, length):
        return estimate_dense(m, Workload(batch, LengthDistribution.fixed(length), num_items=10**6)).activation_parts["encoder"]

    assert activations(model, 64, 100) == pytest.approx(2 * activations(model, 32, 100), rel=0.01)
    assert 2.5 < activations(model, 32, 200) / activations(model, 32, 100) < 4  # padded attention: quadratic in N
    assert activations(deeper, 32, 100) == pytest.approx(2 * activations(model, 32, 100), rel=0.05)


def test_jagged_lengths_cost_less_than_the_maximum():
    model = get_model("sasrec", device="meta", embedding_dim=32, max_seq_len=200)
    short_mostly = LengthDistribution.from_lengths([10] * 95 + [200] * 5)
    fixed = LengthDistribution.fixed(200)
    jagged = estimate_dense(model, Workload(16, short_mostly, num_items=1000)).activation_bytes
    assert jagged < estimate_dense(model, Workload(16, fixed, num_items=1000)).activation_bytes


def test_dense_state_counts_parameters_outside_the_tables_and_the_optimizer():
    model = get_model("dlrm", device="meta")
    estimate = estimate_dense(model, Workload(8), optimizer="adam")
    assert estimate.parameter_bytes == 4 * dense_parameters(model) > 0
    assert estimate.optimizer_bytes == 2 * estimate.parameter_bytes
    assert estimate_dense(model, Workload(8), optimizer="sgd").optimizer_bytes == 0
    with pytest.raises(ConfigError, match="optim.dense.name"):
        estimate_dense(model, Workload(8), optimizer="lion")


def _traced_step(name, batch_size, max_len, tmp_path_factory):
    """(estimate, StepTrace) of one training step after a warm-up one: the tables frozen (their
    memory is the planner's), Adam (multi-tensor, as on a GPU) on the dense parameters."""
    from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

    from recsys.distributed.step_trace import StepTrace

    case = _case(name, batch_size, max_len, tmp_path_factory)
    tables = {id(p) for m in case.model.modules() if isinstance(m, (EmbeddingBagCollection, EmbeddingCollection))
              for p in m.parameters()}
    dense = [p for p in case.model.parameters() if id(p) not in tables]
    for p in case.model.parameters():
        p.requires_grad_(id(p) not in tables)
    optimizer = torch.optim.Adam(dense, lr=1e-4, foreach=True)

    def step():
        optimizer.zero_grad(set_to_none=True)
        case.step().backward()
        optimizer.step()

    step()  # Adam's state exists from here on, as in a running job
    with StepTrace() as trace:
        step()
    return estimate_dense(case.model, case.work), trace


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("batch_size, max_len", [(24, 12), (24, 30), (32, 12), (32, 30)])
def test_step_peak_matches_the_live_bytes_of_a_traced_step(name, batch_size, max_len, tmp_path_factory):
    """The max over phases (forward end, backward with its transients, the optimizer's update) of
    the bytes a step makes, against the peak of live tensor bytes counted op by op on CPU."""
    estimate, trace = _traced_step(name, batch_size, max_len, tmp_path_factory)
    assert estimate.step_peak_bytes == pytest.approx(trace.peak_bytes, rel=0.10), (estimate.phase_bytes, trace.peak_op)


def test_peak_is_the_largest_phase_not_the_sum_of_the_parts():
    model = get_model("dlrm", device="meta")
    small = estimate_dense(model, Workload(8))  # a big dense model at a small batch: the optimizer's update peaks
    assert small.step_peak_bytes == small.phase_bytes["optimizer"] == 2 * small.parameter_bytes
    assert small.peak_bytes < small.dense_bytes + small.activation_bytes + small.parameter_bytes
    big = estimate_dense(get_model("sasrec", device="meta", embedding_dim=32, max_seq_len=100),
                         Workload(256, LengthDistribution.fixed(100), num_items=10**5))
    assert big.step_peak_bytes == big.phase_bytes["backward"] > big.activation_bytes + big.gradient_bytes
    assert big.transient_bytes == big.backward_transient_bytes > 0


@pytest.mark.parametrize("name", ["gru4rec", "dlrm", "hstu_ranking"])
def test_step_ops_extrapolated_in_length_match_a_traced_step(name):
    """The op count traced at two short lengths and extrapolated to 40 events equals the ops a
    TorchDispatchMode counts over a real step (forward, backward, Adam) at 40 events."""
    from recsys.distributed.step_ops import step_ops, traced_ops

    counted, longest = traced_ops(name, 40, {"embedding_dim": 16})
    assert step_ops(name, {"embedding_dim": 16}, longest) == pytest.approx(counted, rel=0.02)
    if name == "gru4rec":  # CPU runs nn.GRU step by step; cuDNN as one op: no growth with the length
        assert step_ops(name, {"embedding_dim": 16}, longest, fused_rnn=True) < 0.7 * counted
