"""Benchmark ``vsc_kernels.linear_elbo`` against the eager materializing reference and
``torch.compile`` of it.

Providers
    ``vsc_kernels``  the fused op (Triton on CUDA, C++/OpenMP on CPU): the squared errors
                     reduced in the epilogue of ``z A^T``, the shared blocked backward
    ``eager``        the reference backend: ``||x_b - A z_bj||^2`` from the ``(B, J, D)``
                     reconstructions in float32, then the selection, plain autograd
    ``compiled``     ``torch.compile`` of ``eager``

Modes: ``forward`` (no grad) and ``forward+backward`` (``z`` and ``A`` require grad, as in
training: ``z``'s gradient feeds the straight-through estimator). Codes come from
``vsc_kernels.threshold_sample`` (Laplace, ``lam = ln 10``: about 10% exact non-zeros).
Throughput counts the dense products a fused implementation performs (forward
``2 B J d D``; backward: ``6 B d D`` for max, ``6 B J d D`` for avg) and is compared with
the measured dense matrix-multiply throughput of this device for the forward's product
shape ``(B J, d) x (d, D)`` in the same dtype (float32 without TF32).

    python bench/linear_elbo.py            # (B, J, d, D) = (100, 20, 256, 256), (512, 10, 4096, 1024)
    python bench/linear_elbo.py --quick    # the small shape only
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import vsc_kernels  # noqa: E402
from bench import common  # noqa: E402

SHAPES = [  # (B, J, d, D): the paper's linear generator (16x16 patches), and a large case
    (100, 20, 256, 256),
    (512, 10, 4096, 1024),
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
METHODS = ("max", "avg")
LAM = math.log(10.0)  # P(|Laplace(0, 1)| > lam) = 0.1


def problem(B, J, d, D, dtype, device):
    g = torch.Generator(device=device).manual_seed(0)
    mu = 0.1 * torch.randn(B, d, device=device, generator=g)
    z = vsc_kernels.threshold_sample(mu, torch.zeros_like(mu), LAM, num_samples=J,
                                     generator=g)
    A = torch.randn(D, d, device=device, generator=g) / d ** 0.5
    x = (z[:, 0] @ A.T + 0.1 * torch.randn(B, D, device=device, generator=g))
    kl = torch.rand(B, J, device=device, generator=g)
    return x.to(dtype), z.to(dtype), A.to(dtype), kl, (z != 0).float().mean().item()


def providers(method):
    def ours(x, z, A, kl):
        return vsc_kernels.linear_elbo(x, z, A, kl, method=method).loss

    def eager(x, z, A, kl):
        return vsc_kernels.linear_elbo(x, z, A, kl, method=method, backend="reference").loss

    return {"vsc_kernels": ours, "eager": eager, "compiled": torch.compile(eager, dynamic=False)}


def flops(B, J, d, D, method, mode):
    forward = 2 * B * J * d * D
    if mode == "forward":
        return forward
    return forward + (6 * B * d * D if method == "max" else 6 * B * J * d * D)


def gemm_throughput(B, J, d, D, dtype, device, repeats):
    a = torch.randn(B * J, d, device=device, dtype=dtype)
    b = torch.randn(d, D, device=device, dtype=dtype)
    out = torch.empty(B * J, D, device=device, dtype=dtype)
    seconds = common.time_call(lambda: torch.mm(a, b, out=out), device, repeats=repeats)
    return 2 * B * J * d * D / seconds


def run(device, shapes, dtypes, methods, repeats):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    backend = vsc_kernels.resolve_backend(None, device.type)
    print(f"device: {common.device_name(device)}; backend: {backend}")
    rows = []
    for B, J, d, D in shapes:
        for dtype_name in dtypes:
            dtype = DTYPES[dtype_name]
            torch._dynamo.reset()
            x, z, A, kl, density = problem(B, J, d, D, dtype, device)
            limit = gemm_throughput(B, J, d, D, dtype, device, repeats)
            for method in methods:
                for name, fn in providers(method).items():
                    zg, Ag = z.clone().requires_grad_(), A.clone().requires_grad_()
                    modes = {
                        "forward": lambda fn=fn: fn(x, z, A, kl),
                        "forward+backward": lambda fn=fn: fn(x, zg, Ag, kl).backward(),
                    }
                    for mode, call in modes.items():
                        with torch.no_grad() if mode == "forward" else torch.enable_grad():
                            seconds = common.time_call(call, device, repeats=repeats)
                            peak = common.peak_memory(call, device)
                        work = flops(B, J, d, D, method, mode)
                        rows.append({
                            "B": B, "J": J, "d": d, "D": D, "dtype": dtype_name,
                            "method": method, "mode": mode, "provider": name,
                            "backend": backend if name == "vsc_kernels" else "reference",
                            "time_ms": seconds * 1e3, "TFLOPs": work / seconds / 1e12,
                            "fraction_of_gemm": work / seconds / limit,
                            "gemm_limit_TFLOPs": limit / 1e12,
                            "peak_memory_MB": None if peak is None else peak / 2**20,
                            "z_density": density,
                        })
                        zg.grad = Ag.grad = None
    common.add_speedups(rows, ("B", "J", "d", "D", "dtype", "method", "mode"),
                        ("eager", "compiled"))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the small shape only")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    shapes = SHAPES[:1] if args.quick else SHAPES
    rows = run(device, shapes, args.dtypes, args.methods, args.repeats)
    common.print_table(rows, [
        ("B", "B", "d"), ("J", "J", "d"), ("d", "d", "d"), ("D", "D", "d"),
        ("dtype", "dtype", "s"), ("method", "method", "s"), ("mode", "mode", "s"),
        ("provider", "provider", "s"), ("time_ms", "ms", ".3f"), ("TFLOPs", "TFLOP/s", ".2f"),
        ("fraction_of_gemm", "of GEMM", ".1%"), ("peak_memory_MB", "peak MB", ".1f"),
        ("speedup_vs_eager", "x eager", ".2f"), ("speedup_vs_compiled", "x compiled", ".2f"),
    ])
    if not args.no_save:
        payload = {"op": "linear_elbo", "environment": common.environment(device),
                   "quick": args.quick, "lam": LAM, "base": "laplace",
                   "kl": "(B, J), no grad", "requires_grad": ["z", "A"],
                   "tf32": False, "results": rows}
        print(f"wrote {common.write_results('linear_elbo', device, payload)}")


if __name__ == "__main__":
    main()
