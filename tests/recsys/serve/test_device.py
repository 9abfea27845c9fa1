"""``--device``: a clear error where CUDA is missing; on a CUDA machine, the same scores as on the CPU."""

import numpy as np
import pytest
import torch

from recsys.errors import ConfigError
from recsys.serve.engine import Engine
from recsys.serve.features import RankingRequest
from tests.recsys.serve.helpers import engine_of

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cuda_without_a_cuda_device_is_a_config_error_naming_the_flag(dlrm_run):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="--device cuda"):
        Engine.load(dlrm_run, device="cuda")
    with pytest.raises(ConfigError, match="not a device"):
        Engine.load(dlrm_run, device="gpu0")


@pytest.mark.parametrize("run_fixture", ["dlrm_run", "transact_v2_run"])
def test_cuda_scores_equal_cpu_scores(run_fixture, request):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    run = request.getfixturevalue(run_fixture)
    cpu, cuda, fused = engine_of(run), Engine.load(run, device="cuda"), None
    encoder = getattr(getattr(cuda.model, "sequence_arch", None), "encoder", None)
    if encoder is not None and hasattr(encoder.config, "inference_kernel"):
        # transact_v2 on CUDA runs SKUT (bf16 matmuls) by default: compare it loosely, and the float32
        # layers exactly; each engine captures its dense stage's CUDA graphs on its first batch
        fused = Engine.load(run, device="cuda")
        encoder.config.inference_kernel = "pytorch"
    log = cpu.store.log
    user = int(log.user_id[cpu.store.index.engaged_events[-1]])
    requests = [RankingRequest(user, np.arange(0, 40, 3), int(log.timestamp.max()) + 1, 0),
                RankingRequest(int(log.user_id[0]), np.arange(7, 12), int(log.timestamp.max()) + 1, 0)]
    with torch.inference_mode():
        expected, got, again = cpu.run(requests), cuda.run(requests), cuda.run(requests)  # again: graphs replayed
        approx = fused.run(requests) if fused is not None else got
    for a, b, c, f in zip(expected, got, again, approx):
        for head in a:
            np.testing.assert_allclose(b[head], a[head], rtol=1e-4, atol=1e-5)
            np.testing.assert_array_equal(c[head], b[head])
            np.testing.assert_allclose(f[head], a[head], atol=2e-2)


def test_cuda_hstu_ranking_scores_equal_cpu_scores(hstu_ranking_run):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    cpu, cuda = engine_of(hstu_ranking_run), Engine.load(hstu_ranking_run, device="cuda")
    log = cpu.store.log
    time = int(log.timestamp.max()) + 1
    requests = [RankingRequest(int(log.user_id[cpu.store.index.engaged_events[-1]]), np.arange(0, 40, 3), time, 0)]
    with torch.inference_mode():
        expected, got, warm = cpu.run(requests), cuda.run(requests), cuda.run(requests)  # warm: the KV cache hit
    for a, b, c in zip(expected, got, warm):
        for head in a:
            np.testing.assert_allclose(b[head], a[head], rtol=1e-3, atol=1e-4)
            np.testing.assert_allclose(c[head], b[head], rtol=1e-5, atol=1e-6)


def test_cuda_retrieval_equals_cpu_retrieval(hstu_run):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from recsys.serve.retriever import RetrievalRequest

    cpu, cuda = engine_of(hstu_run), Engine.load(hstu_run, device="cuda")
    log = cpu.store.log
    time = int(log.timestamp.max()) + 1
    requests = [RetrievalRequest(int(log.user_id[cpu.store.index.engaged_events[-1]]), 10, time, "last_n")]
    with torch.inference_mode():
        (items_cpu, scores_cpu), = cpu.run(requests)
        (items_cuda, scores_cuda), = cuda.run(requests)
    np.testing.assert_allclose(scores_cuda, scores_cpu, rtol=1e-3, atol=1e-4)
    assert items_cuda[:3] == items_cpu[:3]
