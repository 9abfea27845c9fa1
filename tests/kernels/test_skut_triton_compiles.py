"""The SKUT kernel compiles for Hopper (sm_90a) without a GPU.

The interpreter runs a kernel as Python and accepts code the GPU compiler rejects. This test
compiles the kernel (post-norm with ReLU and one head at the default tiles; pre-norm with GELU and
two heads at smaller tiles) through Triton's CUDA backend down to a cubin in a subprocess
(``TRITON_INTERPRET`` unset: ``@triton.jit`` then builds compilable functions), and skips where
Triton has no CUDA backend or ``ptxas``.
"""

import textwrap

from tests.kernels.sm90_compile import compile_in_subprocess

SCRIPT = textwrap.dedent('''
    import os
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import recsys.kernels.skut_triton as K

    POINTERS = {"x_ptr": "*fp32", "lengths_ptr": "*i64", "out_ptr": "*fp32", "h_ptr": "*fp32", "kv_ptr": "*bf16"}
    MATRICES = {"win_ptr", "wq_ptr", "wk_ptr", "wv_ptr", "wo_ptr", "w1_ptr", "w2_ptr", "wr_ptr"}
    SIZES = dict(E=64, D=64, HD=64, FF=32, FO=64, H=1, BF16_DOT=True)

    def compile_kernel(constexprs, num_warps, num_stages):
        fn = K._skut_kernel
        signature, attrs = {}, {}
        for i, name in enumerate(fn.arg_names):
            if fn.params[i].is_constexpr:
                signature[name] = "constexpr"
                continue
            signature[name] = (POINTERS.get(name, "*bf16" if name in MATRICES else "*fp32") if name.endswith("_ptr")
                               else "fp32" if name in ("qk_scale", "eps") else "i32")
            if signature[name].startswith("*") or name.startswith("stride") or name == "scratch_rows":
                attrs[(i,)] = [["tt.divisibility", 16]]  # what a launch specializes aligned arguments to
        source = ASTSource(fn, signature, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                                  options=dict(num_warps=num_warps, num_stages=num_stages))
        assert compiled.asm["cubin"]
        print("compiled", constexprs["NORM_FIRST"], constexprs["H"])

    compile_kernel(dict(SIZES, BLOCK_M=K.DEFAULT_BLOCK_M, BLOCK_N=K.DEFAULT_BLOCK_N, NORM_FIRST=False, GELU=False),
                   K.DEFAULT_NUM_WARPS, K.DEFAULT_NUM_STAGES)
    compile_kernel(dict(SIZES, H=2, HD=32, BLOCK_M=32, BLOCK_N=16, NORM_FIRST=True, GELU=True), 4, 2)
''')


def test_kernel_compiles_for_sm90():
    stdout = compile_in_subprocess(SCRIPT, timeout=600)
    assert stdout.count("compiled") == 2
