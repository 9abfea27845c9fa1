"""Kernel tests on a GPU: quick autotuning.

Each new tuning key makes an autotuned kernel time every config it may pick, by default 25 ms of
warm-up and 100 ms of repeats each: about 10 s per test of the HSTU attention file on an H100,
most of a GPU session for the whole suite. Here every config still compiles and runs at every key
(a config that faults still fails its test, and the pick stays a timed one), timed in a few
milliseconds. Nothing changes on CPU, where the interpreter runs fixed tiles.
"""

import pytest
import torch

QUICK_WARMUP_MS, QUICK_REP_MS = 1, 5


def _autotuners():
    from recsys.kernels import hstu_attention_triton, nn_select_triton

    return [hstu_attention_triton._fwd_tuned, hstu_attention_triton._dkdv_tuned, hstu_attention_triton._dq_tuned,
            nn_select_triton._select_tuned]


@pytest.fixture(autouse=True, scope="session")
def quick_autotuning():
    if not torch.cuda.is_available():
        yield
        return
    import triton.testing

    def quick(kernel_call, quantiles):
        return triton.testing.do_bench(kernel_call, warmup=QUICK_WARMUP_MS, rep=QUICK_REP_MS, quantiles=quantiles)

    tuners = [t for t in _autotuners() if hasattr(t, "_do_bench")]  # Triton's benchmark hook (3.x)
    saved = [t._do_bench for t in tuners]
    for tuner in tuners:
        tuner._do_bench = quick
    yield
    for tuner, bench in zip(tuners, saved):
        tuner._do_bench = bench
