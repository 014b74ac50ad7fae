"""Compile the ops' Triton kernels for a CUDA target without a GPU (the local Triton's
front end, optimizer and ptxas), so that a kernel change that the CPU interpreter accepts
but the GPU compiler rejects is caught before a GPU session.

    python bench/compile_triton.py                 # sm_90 (H100/H200)
    python bench/compile_triton.py --arch 80       # sm_80 (A100)

Covers every constexpr variant of the threshold_sample kernels, both FISTA kernels, the
linear_elbo product kernel (fp32 and bf16 tiles) and the elbo_select kernels. It checks
compilation only (this Triton's version, not necessarily the GPU machine's), never speed.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402


def _compile(kernel, target, constexprs, pointers, floats=()):
    """``pointers``: name -> Triton pointer type; the other non-constexpr arguments are
    int32 (int64 for strides) or fp32 when named in ``floats``."""
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = pointers[name]
        elif name in floats:
            signature[name] = "fp32"
        elif name.startswith(("stride", "s_")):
            signature[name] = "i64"
        else:
            signature[name] = "i32"
    index = {name: i for i, name in enumerate(kernel.arg_names)}
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(index[k],): v for k, v in constexprs.items()})
    compiled = triton.compile(source, target=target)
    return len(compiled.asm.get("ptx", ""))


def jobs():
    ts = importlib.import_module("vsc_kernels.threshold_sample.triton_kernels")
    fista = importlib.import_module("vsc_kernels.fista.triton_kernels")
    linear = importlib.import_module("vsc_kernels.linear_elbo.triton_kernels")
    elbo = importlib.import_module("vsc_kernels.elbo_select.triton_kernels")
    f32 = "*fp32"
    for base, has_lam, kl in itertools.product((0, 1), (False, True), (False, True)):
        yield (ts._threshold_sample_fwd_kernel,
               dict(BASE=base, HAS_LAM=has_lam, RETURN_KL=kl, BLOCK_M=4, BLOCK_D=256),
               {n: f32 for n in ("mu_ptr", "logb_ptr", "lam_ptr", "z_ptr", "kl_part_ptr")}
               | {"seed_ptr": "*i64"},
               ("lam_value", "warmup", "prior_scale", "log_prior_scale"))
    for base, est, lam_grad, split in itertools.product((0, 1), (0, 1, 2), (False, True),
                                                        (False, True)):
        yield (ts._threshold_sample_bwd_kernel,
               dict(BASE=base, ESTIMATOR=est, HAS_LAM=lam_grad, HAS_GRAD_KL=True,
                    LAM_GRAD=lam_grad, SPLIT_J=split, BLOCK_M=4, BLOCK_D=256),
               {n: f32 for n in ("grad_z_ptr", "grad_kl_ptr", "mu_ptr", "logb_ptr", "lam_ptr",
                                 "grad_mu_ptr", "grad_logb_ptr", "grad_lam_ptr")}
               | {"seed_ptr": "*i64"},
               ("lam_value", "warmup", "prior_scale"))
    pointers = {"gram_ptr": f32, "c_ptr": f32, "lam_ptr": f32, "z0_ptr": f32, "codes_ptr": f32,
                "y_ptr": f32, "n_iter_ptr": "*i32", "conv_ptr": "*i1"}
    for nonneg in (False, True):
        yield (fista._fista_resident_kernel,
               dict(NONNEG=nonneg, BLOCK_B=16, BLOCK_D=64, DOT_PRECISION="ieee"),
               pointers, ("step", "tol"))
        yield (fista._fista_chunked_kernel,
               dict(NONNEG=nonneg, BLOCK_B=16, BLOCK_N=64, BLOCK_K=32, DOT_PRECISION="ieee"),
               pointers, ("step", "tol"))
    for dtype, upcast in (("*fp32", False), ("*bf16", False)):
        yield (linear._squared_error_kernel,
               dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, USE_DOT=True, UPCAST=upcast,
                    IS_FP32=dtype == "*fp32", DOT_PRECISION="ieee", ACC_DTYPE=tl.float32),
               {"x_ptr": dtype, "z_ptr": dtype, "a_ptr": dtype, "part_ptr": f32}, ())
    yield (elbo._squared_error_kernel, dict(ACC=tl.float32, BLOCK_R=4, BLOCK_F=256),
           {"x_ptr": f32, "xh_ptr": "*bf16", "e_ptr": f32}, ())
    for need_x in (False, True):
        yield (elbo._backward_kernel,
               dict(NEED_X=need_x, ACC=tl.float32, BLOCK_B=4, BLOCK_F=256),
               {"g_ptr": f32, "x_ptr": f32, "xh_ptr": f32, "gxh_ptr": f32, "gx_ptr": f32}, ())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability (90, 80)")
    args = parser.parse_args(argv)
    target = GPUTarget("cuda", args.arch, 32)
    print(f"triton {triton.__version__}, target sm_{args.arch}")
    failures = 0
    for kernel, constexprs, pointers, floats in jobs():
        start = time.perf_counter()
        try:
            size = _compile(kernel, target, constexprs, pointers, floats)
            print(f"ok   {kernel.fn.__name__} {constexprs} ({size} bytes of PTX, "
                  f"{time.perf_counter() - start:.1f} s)", flush=True)
        except Exception as exc:  # noqa: BLE001 - report every failing variant
            failures += 1
            print(f"FAIL {kernel.fn.__name__} {constexprs}: {type(exc).__name__}: {exc}",
                  flush=True)
    if failures:
        raise SystemExit(f"{failures} kernel variants failed to compile")


if __name__ == "__main__":
    main()
