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
    the bytes a step makes, against the peak of live tensor bytes counted op by op on CPU. (At
    these sizes the sampled softmax's [N, U] gradient, which a dispatch mode sees made out of
    place, is not the peak: see test_sampled_softmax_step_peak_matches_the_allocator.)"""
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


def _loss_world():
    """A world with 4,000 items, so the sampled softmax's [N, U] scores or [N, K, D] vectors
    dominate a small encoder's step."""
    from recsys.data.synthetic import SyntheticConfig

    return SyntheticConfig(num_users=60, num_items=4000, mean_events_per_user=40, heavy_user_fraction=0.1,
                           heavy_user_events=200)


@pytest.mark.parametrize("name", ["hstu", "sasrec"])
@pytest.mark.parametrize("num_negatives", [1024, 64])  # U <= K D: [N, U] scores; U > K D: gathered [N, K, D]
def test_sampled_softmax_step_peak_matches_the_allocator(name, num_negatives):
    """The step's peak with the item table training (its gradient flows through the sampled
    vectors, as under DMP), against the CPU allocator's own count (no dispatch mode: see
    recsys.distributed.allocated_peak): the backward holds one [N, U] gradient buffer (gather's
    zeros, scatter_add_-ed in place) or one [N, K, D] gradient beside what is saved."""
    from torchrec.modules.embedding_modules import EmbeddingCollection

    from recsys.distributed.allocated_peak import allocated_peak_bytes
    from recsys.distributed.dense_estimate import _distinct_draws

    case = probe_case(name, 24, 30, synthetic=_loss_world(), embedding_dim=16, num_negatives=num_negatives)
    table_grads = sum(4 * p.numel() for m in case.model.modules() if isinstance(m, EmbeddingCollection)
                      for p in m.parameters())

    def step():
        case.model.zero_grad(set_to_none=True)
        case.step().backward()

    step()
    peak, _ = allocated_peak_bytes(step)
    estimate = estimate_dense(case.model, case.work)
    queries = case.work.lengths.mean * case.work.batch_size - case.work.batch_size
    assert (_distinct_draws(queries, num_negatives, 4000) <= num_negatives * 16) == (num_negatives == 1024)
    assert estimate.step_peak_bytes + table_grads == pytest.approx(peak, rel=0.10), estimate.phase_bytes


def _encoder(case):
    return getattr(case.model, "model", case.model).encoder  # a RankingTask holds the zoo model


def _bias_table_adds(case) -> tuple:
    """(elements, calls) of the index_add ops of one step into the combined relative-bias table."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from recsys.ops.relative_bias_index import combined_bias_table

    kwargs = _encoder(case).layers[0].relative_bias.op_kwargs()
    entries = combined_bias_table(kwargs.get("position_bias"), kwargs.get("time_bias")).shape[0]

    class Adds(TorchDispatchMode):
        elements, calls = 0, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.index_add, torch.ops.aten.index_add_) and args[0].shape[0] == entries:
                self.elements += args[2].numel()
                self.calls += 1
            return func(*args, **(kwargs or {}))

    with Adds() as adds:
        case.step().backward()
    return adds.elements, adds.calls


@pytest.mark.parametrize("name", ["hstu", "hstu_ranking"])
def test_bias_scatter_adds_are_the_index_add_elements_of_a_step(name, tmp_path_factory):
    """Every HSTU layer's backward adds its [B, N, N] relative-bias gradient into the small bias
    table: B N^2 elements per layer, counted exactly."""
    case = _case(name, 8, 20, tmp_path_factory)
    elements, calls = _bias_table_adds(case)
    estimate = estimate_dense(case.model, case.work)
    assert calls == len(_encoder(case).layers)
    assert estimate.scatter_adds == elements > 0
    assert estimate.scatter_ms(ns_per_element=2.0) == pytest.approx(elements * 2e-6)


def test_an_accelerator_pads_hstu_attention_to_max_seq_len():
    """On CUDA the reference attention's layout pads to the encoder's max_seq_len (no host read
    of the lengths); on CPU to the batch's longest sequence. ("auto" takes the fused kernel on
    CUDA, which pads nothing: the reference is asked for by name.)"""
    model = get_model("hstu", device="meta", embedding_dim=32, num_layers=3, max_seq_len=80, attention_kernel="pytorch")
    lengths = LengthDistribution.from_lengths([10, 20, 40, 40])
    cpu = estimate_dense(model, Workload(4, lengths, num_items=1000))
    cuda = estimate_dense(model, Workload(4, lengths, num_items=1000, accelerator=True))
    assert cpu.scatter_adds == 3 * 4 * 40 * 40
    assert cuda.scatter_adds == 3 * 4 * 80 * 80
    assert cuda.activation_parts["encoder"] > cpu.activation_parts["encoder"]
    assert cuda.activation_parts["loss"] == cpu.activation_parts["loss"]


@pytest.mark.parametrize("name", ["hstu", "hstu_ranking"])
def test_fused_hstu_attention_estimate_matches_saved_tensors(name, tmp_path_factory):
    """The fused Triton kernel (run by the interpreter on CPU, TRITON_INTERPRET=1 from
    tests/conftest.py) keeps no padded [B, H, N, N] tensors, mask or bias index, and adds no
    index_add_: the estimate follows the encoder's kernel."""
    from recsys.distributed.dense_estimate import uses_fused_hstu_attention

    cache = tmp_path_factory.getbasetemp() / "lifelong"
    overrides = {"embedding_dim": 16, "num_layers": 1, **({"num_negatives": 8} if name == "hstu" else {})}
    fused = probe_case(name, 6, 10, cache_dir=str(cache), attention_kernel="triton", **overrides)
    reference = probe_case(name, 6, 10, cache_dir=str(cache), attention_kernel="pytorch", **overrides)
    assert uses_fused_hstu_attention(_encoder(fused), accelerator=False)
    assert not uses_fused_hstu_attention(_encoder(reference), accelerator=False)
    measured, by_module = saved_activation_bytes(fused.model, fused.step)
    estimate = estimate_dense(fused.model, fused.work)
    assert estimate.activation_bytes == pytest.approx(measured, rel=0.10), by_module
    assert estimate.scatter_adds == 0
    assert estimate.activation_bytes < estimate_dense(reference.model, reference.work).activation_bytes


def test_the_op_count_probe_runs_hstu_attention_where_it_can(monkeypatch):
    """A plan for CUDA with attention_kernel=triton is traced on CPU with the reference (the
    Triton kernel runs on CPU only in the interpreter)."""
    from recsys.distributed.step_ops import _on_cpu

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert _on_cpu({"attention_kernel": "triton", "embedding_dim": 16}) == {"attention_kernel": "auto", "embedding_dim": 16}
    assert _on_cpu({"attention_kernel": "pytorch"}) == {"attention_kernel": "pytorch"}
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _on_cpu({"attention_kernel": "triton"}) == {"attention_kernel": "triton"}


def _gru_forward_bytes(model, batch_size, length, accelerator):
    estimate = estimate_dense(model, Workload(batch_size, LengthDistribution.fixed(length), accelerator=accelerator))
    return estimate.activation_parts["sequence_encoder"], estimate.forward_transient_bytes


def test_mimn_on_cuda_counts_the_fused_gru_cells_saves():
    """On CUDA each nn.GRUCell step of MIMN (the controller, and the MIU's over m slots) is one
    fused op that saves 5 hidden widths more per row than the CPU's cell (the H100 allocator's
    mimn peak was 1.11-1.35x the plan without it; see dense_estimate._mimn)."""
    from recsys.distributed.dense_estimate import FUSED_GRU_CELL_EXTRA_PER_HIDDEN

    model = get_model("mimn", device="meta", embedding_dim=16)
    arch = model.arch
    cpu, _ = _gru_forward_bytes(model, 256, 50, accelerator=False)
    cuda, _ = _gru_forward_bytes(model, 256, 50, accelerator=True)
    extra = FUSED_GRU_CELL_EXTRA_PER_HIDDEN * (arch.controller_dim + arch.memory_slots * arch.induction_dim)
    assert cuda - cpu == 4 * 256 * 50 * extra


def test_cudnn_gru_adds_its_workspace_to_the_forward_peak():
    """On CUDA, nn.GRU is one cuDNN op whose workspace and layout copies peak in the forward at
    about 26.5 h + 4 d floats per token (H100 allocator, see dense_estimate._gru); on CPU it
    runs step by step and holds only what it saves."""
    from recsys.distributed.dense_estimate import CUDNN_GRU_FLOATS_PER_HIDDEN

    model = get_model("gru4rec", device="meta", embedding_dim=16)
    h, d = model.arch.gru.hidden_size, model.config.embedding_dim
    saved_cpu, transient_cpu = _gru_forward_bytes(model, 256, 50, accelerator=False)
    saved_cuda, transient_cuda = _gru_forward_bytes(model, 256, 50, accelerator=True)
    assert saved_cuda == saved_cpu
    assert transient_cuda == 4 * 256 * 50 * (CUDNN_GRU_FLOATS_PER_HIDDEN * h + 3 * d) > transient_cpu
    gru_saved = 4 * 256 * 50 * (d + 7 * h)
    assert (gru_saved + transient_cuda) / (4 * 256 * 50) == pytest.approx(26.5 * h + 4 * d)
