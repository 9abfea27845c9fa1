"""The train-step options on CPU: the lr schedule reaches FBGEMM's fused tables in step, dense
gradient clipping, bf16 autocast and torch.compile of the dense modules."""

import pytest
import torch
from torch import nn

from recsys.distributed.optimizers import DenseOptimizerConfig, FusedOptimizerConfig, build_optimizer, dense_parameters
from recsys.distributed.process_group import init_distributed, teardown
from recsys.distributed.sharding import ShardingConfig, shard_model
from recsys.train.config import OptimConfig, TrainConfig, TrainerConfig
from recsys.train.lr_schedule import LRScheduleConfig
from recsys.train.step_options import StepOptions, clip_dense_gradients, compile_dense_modules
from tests.recsys.distributed.toy_sharded import ToyRanker, full_state, toy_batch

FUSED_TABLE = "ebc.embedding_bags.t0.weight"
TABLE_WISE = ShardingConfig({"t0": {"sharding_types": ["table_wise"]}})  # t0 in FBGEMM's fused kernel


@pytest.fixture(scope="module")
def ctx():
    context = init_distributed()
    yield context
    teardown(context)


def _sharded(ctx, lr: float = 0.5):
    torch.manual_seed(0)
    dmp = shard_model(ToyRanker(torch.device("meta")), ctx, TABLE_WISE, FusedOptimizerConfig(optimizer="sgd", lr=lr))
    return dmp, build_optimizer(dmp, DenseOptimizerConfig("sgd", lr=lr))


def _config(schedule: LRScheduleConfig = LRScheduleConfig(), **train) -> TrainConfig:
    return TrainConfig(optim=OptimConfig(schedule=schedule), train=TrainerConfig(**train))


def _step_deltas(ctx, cfg: TrainConfig, steps: int, total_steps: int = 10) -> list[dict]:
    """Per step, the change of every weight, training as the recipes do."""
    dmp, optimizer = _sharded(ctx)
    options = StepOptions.setup(cfg, dmp, optimizer, ctx.device, total_steps=total_steps)
    deltas = []
    for step in range(steps):
        before = full_state(dmp.state_dict())
        with options.autocast():
            loss = dmp(toy_batch(8, seed=step)).pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        options.after_step()
        after = full_state(dmp.state_dict())
        deltas.append({name: after[name] - before[name] for name in before})
    return deltas


def test_warmup_scales_the_first_update_of_sharded_tables_and_dense_layers(ctx):
    plain = _step_deltas(ctx, _config(), steps=1)[0]
    warm = _step_deltas(ctx, _config(LRScheduleConfig(warmup_steps=4)), steps=1)[0]  # step 0: lr x 1/4
    assert plain[FUSED_TABLE].abs().sum() > 0
    for name in plain:
        torch.testing.assert_close(warm[name], plain[name] / 4, rtol=1e-5, atol=1e-7, msg=name)


def test_the_tables_take_each_steps_lr_in_that_step(ctx):
    """Linear decay over 1 step to half: lr x 1 at step 0, x 0.5 at step 1 (not one step late)."""
    plain = _step_deltas(ctx, _config(), steps=2)
    decayed = _step_deltas(ctx, _config(LRScheduleConfig(decay="linear", min_lr_ratio=0.5)), steps=2, total_steps=1)
    for name in plain[0]:
        torch.testing.assert_close(decayed[0][name], plain[0][name], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(decayed[1][name], plain[1][name] / 2, rtol=1e-5, atol=1e-7, msg=name)


def test_clipping_bounds_the_dense_update_and_leaves_the_fused_table_alone(ctx):
    plain = _step_deltas(ctx, _config(), steps=1)[0]
    clipped = _step_deltas(ctx, _config(clip_grad_norm=1e-3), steps=1)[0]
    dense = [name for name in plain if name != FUSED_TABLE]
    norm = lambda deltas: torch.linalg.vector_norm(torch.cat([deltas[n].flatten() for n in dense]))  # noqa: E731
    assert norm(plain) > 0.5 * 1e-2  # the raw update is far above the clipped one
    torch.testing.assert_close(norm(clipped), torch.tensor(0.5 * 1e-3), rtol=1e-4, atol=0)  # lr x max_norm
    torch.testing.assert_close(clipped[FUSED_TABLE], plain[FUSED_TABLE], rtol=0, atol=0)  # fused: not clippable


def test_clip_hook_runs_on_the_combined_optimizer(ctx):
    dmp, optimizer = _sharded(ctx)
    params = list(dense_parameters(dmp).values())
    handle = clip_dense_gradients(optimizer, params, max_norm=1e-6)
    dmp(toy_batch(8, seed=0)).pow(2).sum().backward()
    optimizer.step()
    assert float(torch.nn.utils.get_total_norm([p.grad for p in params])) <= 1e-6 * 1.001
    handle.remove()


def test_bf16_autocast_runs_the_dense_forward_in_bf16_on_cpu(ctx):
    dmp, optimizer = _sharded(ctx)
    dtypes = []
    dmp.module.linear.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    for autocast in ("none", "bf16"):
        options = StepOptions.setup(_config(autocast=autocast), dmp, optimizer, ctx.device, total_steps=1)
        with options.autocast():
            dmp(toy_batch(4, seed=0))
    assert dtypes == [torch.float32, torch.bfloat16]
    steps = _step_deltas(ctx, _config(autocast="bf16"), steps=2)
    assert all(torch.isfinite(d).all() and d.abs().sum() > 0 for d in steps[1].values())


def test_compile_compiles_the_dense_modules_only_and_keeps_outputs_and_names(ctx):
    dmp, _ = _sharded(ctx)
    batch = toy_batch(8, seed=2)
    eager, keys = dmp(batch).detach(), list(dmp.state_dict())
    assert compile_dense_modules(dmp) == ["linear"]
    assert dmp.module.linear._compiled_call_impl is not None
    torch.testing.assert_close(dmp(batch), eager, rtol=1e-6, atol=1e-6)
    assert list(dmp.state_dict()) == keys  # checkpoints keep their names


def test_compile_descends_into_modules_that_hold_tables():
    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = ToyRanker(torch.device("cpu"))
            self.head = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
            self.loss = nn.MSELoss()  # no parameters: left alone

    assert compile_dense_modules(Outer()) == ["inner.linear", "head"]
