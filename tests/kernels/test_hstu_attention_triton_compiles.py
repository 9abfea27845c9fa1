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
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import recsys.kernels.hstu_attention_triton as K

    POINTERS = {"seq_offsets_ptr": "*i64", "query_offsets_ptr": "*i64", "num_targets_ptr": "*i64",
                "ts_ptr": "*i64", "next_ts_ptr": "*i64", "pos_bias_ptr": "*fp32", "time_bias_ptr": "*fp32",
                "thresholds_ptr": "*i64", "inv_norm_ptr": "*fp32", "dpos_ptr": "*fp32", "dtime_ptr": "*fp32"}
    FLOATS = {"alpha", "max_len_norm", "bucket_scale"}
    INT64 = {"pos_grad_stride", "time_grad_stride"}
    FLAGS = dict(CAUSAL=True, HAS_TARGETS=True, HAS_WINDOW=True, HAS_CONTEXT=True, HAS_POS=True, HAS_TIME=True,
                 HAS_NEXT_TS=True, BLOCK_DQK=128, BLOCK_DV=128, INPUT_PRECISION=None, FAST_SIGMOID=True)

    def compile_kernel(fn, constexprs, num_warps, num_stages):
        signature, attrs = {}, {}
        for i, name in enumerate(fn.arg_names):
            if fn.params[i].is_constexpr:
                signature[name] = "constexpr"
                continue
            signature[name] = (POINTERS.get(name, "*bf16") if name.endswith("_ptr") else
                               "fp32" if name in FLOATS else "i64" if name in INT64 else "i32")
            if signature[name].startswith("*") or name.startswith("stride") or name.startswith("dim"):
                attrs[(i,)] = [["tt.divisibility", 16]]  # what a launch specializes aligned arguments to
        source = ASTSource(fn, signature, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                                  options=dict(num_warps=num_warps, num_stages=num_stages))
        assert compiled.asm["cubin"], fn.__name__
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
