"""The fused HSTU attention kernels compile for Hopper (sm_90a) without a GPU.

The interpreter runs a kernel as Python and accepts code the GPU compiler rejects (a variable whose
type differs between the branches of a run-time ``if``, say). This test compiles the forward, dK/dV
and dQ kernels, with every mask and bias option on, through Triton's CUDA backend down to a cubin
in a subprocess (``TRITON_INTERPRET`` unset: ``@triton.jit`` then builds compilable functions), and
skips where Triton has no CUDA backend or ``ptxas``.
"""

import textwrap

from tests.kernels.sm90_compile import compile_in_subprocess

SCRIPT = textwrap.dedent('''
    import os
    os.environ.pop("TRITON_INTERPRET", None)
    import recsys.kernels.hstu_attention_triton as K
    from tests.kernels.hstu_sm90 import compile_hstu_kernel

    FLAGS = dict(CAUSAL=True, HAS_TARGETS=True, HAS_WINDOW=True, HAS_CONTEXT=True, HAS_POS=True, HAS_TIME=True,
                 HAS_NEXT_TS=True, BLOCK_DQK=128, BLOCK_DV=128, INPUT_PRECISION=None, FAST_SIGMOID=True)

    def compile_kernel(fn, constexprs, num_warps, num_stages):
        assert compile_hstu_kernel(fn, constexprs, num_warps, num_stages).asm["cubin"], fn.__name__
        print("compiled", fn.__name__, constexprs.get("DETERMINISTIC", ""))

    compile_kernel(K._hstu_fwd_kernel, dict(FLAGS, LENGTH_NORM=True, BLOCK_M=128, BLOCK_N=64), 8, 3)
    for deterministic in (False, True):
        compile_kernel(K._hstu_bwd_dkdv_kernel, dict(FLAGS, BIAS_GRAD=True, DETERMINISTIC=deterministic,
                                                     BLOCK_M=32, BLOCK_N=128), 8, 2)
    compile_kernel(K._hstu_bwd_dq_kernel, dict(FLAGS, BLOCK_M=128, BLOCK_N=64), 8, 2)
''')


def test_every_kernel_compiles_for_sm90_with_every_option_on():
    stdout = compile_in_subprocess(SCRIPT, timeout=600)
    assert stdout.count("compiled") == 4
