"""Compiles a fused HSTU attention kernel for Hopper (sm_90a) without a GPU.

Imported by the scripts :func:`tests.kernels.sm90_compile.compile_in_subprocess` runs (there
``TRITON_INTERPRET`` is unset, so ``@triton.jit`` builds compilable functions); not by test modules.
"""

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

POINTERS = {"seq_offsets_ptr": "*i64", "query_offsets_ptr": "*i64", "num_targets_ptr": "*i64", "ts_ptr": "*i64",
            "next_ts_ptr": "*i64", "pos_bias_ptr": "*fp32", "time_bias_ptr": "*fp32", "thresholds_ptr": "*i64",
            "inv_norm_ptr": "*fp32", "dpos_ptr": "*fp32", "dtime_ptr": "*fp32"}  # other pointers: bf16 data
FLOATS = {"alpha", "max_len_norm", "bucket_scale"}
INT64 = {"pos_grad_stride", "time_grad_stride"}


def compile_hstu_kernel(fn, constexprs: dict, num_warps: int, num_stages: int):
    """The compiled kernel ``fn`` (``.asm["ttgir"]``, ``.asm["cubin"]``...) for sm_90a, its
    arguments typed as a bf16 launch types them and aligned pointers / strides specialised."""
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
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps, num_stages=num_stages))
