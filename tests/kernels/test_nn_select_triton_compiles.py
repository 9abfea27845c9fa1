"""The fused NN-selection kernels compile for Hopper (sm_90a) without a GPU.

The interpreter runs a kernel as Python and accepts code the GPU compiler rejects. This test
compiles the selection kernel at each autotuned tile and warp count of k = 64, C = 32 (whole
sequences; segments at the first tile)
and the segment-merge kernel through Triton's CUDA backend down to a cubin in a subprocess
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
    import recsys.kernels.nn_select_triton as K

    POINTERS = {"values_ptr": "*i8", "inv_norms_ptr": "*fp32", "seq_starts_ptr": "*i64", "seq_lengths_ptr": "*i64",
                "codes_ptr": "*i8", "order_ptr": "*i64", "group_first_ptr": "*i64", "group_count_ptr": "*i64",
                "buf_ptr": "*i32", "state_ptr": "*i64", "out_ptr": "*i64", "keys_ptr": "*i64"}

    def compile_kernel(fn, constexprs, num_warps, num_stages):
        signature, attrs = {}, {}
        for i, name in enumerate(fn.arg_names):
            if fn.params[i].is_constexpr:
                signature[name] = "constexpr"
            elif name.endswith("_ptr"):
                signature[name] = POINTERS[name]
                attrs[(i,)] = [["tt.divisibility", 16]]
            else:
                signature[name] = "i32"
        source = ASTSource(fn, signature, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                                  options=dict(num_warps=num_warps, num_stages=num_stages))
        assert compiled.asm["cubin"]
        print("compiled", fn.__name__, constexprs.get("BLOCK_S"))

    k_pad, seen = 64, set()
    for config in K._fitting(K.CONFIGS, 64):
        block_s = config.kwargs["BLOCK_S"]
        if (block_s, config.num_warps) in seen:  # another pipeline depth of a tile already compiled
            continue
        seen.add((block_s, config.num_warps))
        args = dict(K_PAD=k_pad, BLOCK_S=block_s, BLOCK_N=64)
        for write_keys in (False, True)[: 2 if len(seen) == 1 else 1]:  # segments: at the first tile
            compile_kernel(K._nn_select_kernel, dict(BLOCK_N=64, BLOCK_S=block_s, LOG_S=block_s.bit_length() - 1,
                                                     BLOCK_C=32, K_PAD=k_pad, CAP=K._cap(args),
                                                     LOG_CAP=K._cap(args).bit_length() - 1, SUB=K._sub(args),
                                                     WRITE_KEYS=write_keys),
                           config.num_warps, config.num_stages)
    compile_kernel(K._merge_segments_kernel, dict(ROWS=K.MERGE_ROWS, W=256, LOG_W=8), 4, 1)
''')


def test_every_tile_of_the_selection_kernel_and_the_merge_compile_for_sm90():
    stdout = compile_in_subprocess(SCRIPT, timeout=900)
    assert stdout.count("compiled _nn_select_kernel") >= 2 and "compiled _merge_segments_kernel" in stdout
