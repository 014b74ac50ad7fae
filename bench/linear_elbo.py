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

Providers of a group are timed in interleaved rounds (median), so that load on a shared
machine hits them alike.

    python bench/linear_elbo.py            # (B, J, d, D) = (100, 20, 256, 256), (512, 10, 4096, 1024)
    python bench/linear_elbo.py --quick    # both shapes, fp32, max and avg, fewer rounds
"""

from __future__ import annotations

import argparse
import functools
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
MODES = ("forward", "forward+backward")
LAM = math.log(10.0)  # P(|Laplace(0, 1)| > lam) = 0.1


@functools.lru_cache(maxsize=1)
def problem(B, J, d, D, dtype_name, device_str):
    device = torch.device(device_str)
    dtype = DTYPES[dtype_name]
    g = torch.Generator(device=device).manual_seed(0)
    mu = 0.1 * torch.randn(B, d, device=device, generator=g)
    z = vsc_kernels.threshold_sample(mu, torch.zeros_like(mu), LAM, num_samples=J,
                                     generator=g)
    A = torch.randn(D, d, device=device, generator=g) / d ** 0.5
    x = (z[:, 0] @ A.T + 0.1 * torch.randn(B, D, device=device, generator=g))
    kl = torch.rand(B, J, device=device, generator=g)
    density = (z != 0).float().mean().item()
    x, z, A = x.to(dtype), z.to(dtype), A.to(dtype)
    return x, z, A, kl, z.clone().requires_grad_(), A.clone().requires_grad_(), density


def _ours(x, z, A, kl, method):
    return vsc_kernels.linear_elbo(x, z, A, kl, method=method).loss


def _eager(x, z, A, kl, method):
    return vsc_kernels.linear_elbo(x, z, A, kl, method=method, backend="reference").loss


@functools.lru_cache(maxsize=None)
def _compiled(method):
    return torch.compile(functools.partial(_eager, method=method), dynamic=False)


def flops(B, J, d, D, method, mode):
    forward = 2 * B * J * d * D
    if mode == "forward":
        return forward
    return forward + (6 * B * d * D if method == "max" else 6 * B * J * d * D)


@functools.lru_cache(maxsize=None)
def gemm_limit(B, J, d, D, dtype_name, device_str):
    """The measured dense matrix-multiply throughput for the forward's product shape."""
    device = torch.device(device_str)
    dtype = DTYPES[dtype_name]
    a = torch.randn(B * J, d, device=device, dtype=dtype)
    b = torch.randn(d, D, device=device, dtype=dtype)
    out = torch.empty(B * J, D, device=device, dtype=dtype)
    seconds = common.time_call(lambda: torch.mm(a, b, out=out), device, repeats=10)
    return 2 * B * J * d * D / seconds, f"measured {dtype_name} GEMM ({B * J}x{d})x({d}x{D})"


def _forward(fn, x, z, A, kl):
    with torch.no_grad():
        return fn(x, z, A, kl)


def _forward_backward(fn, x, zg, Ag, kl):
    fn(x, zg, Ag, kl).backward()
    zg.grad = Ag.grad = None


def cases(device: torch.device, quick: bool = False, dtypes=None, methods=None):
    dtypes = dtypes or (["fp32"] if quick else list(DTYPES))
    methods = methods or list(METHODS)
    out = []
    for B, J, d, D in SHAPES:
        for dtype_name in dtypes:
            for method in methods:
                for mode in MODES:
                    def build(B=B, J=J, d=d, D=D, dtype_name=dtype_name, method=method,
                              mode=mode):
                        x, z, A, kl, zg, Ag, _ = problem(B, J, d, D, dtype_name, str(device))
                        fns = {"eager": functools.partial(_eager, method=method),
                               "compiled": _compiled(method),
                               "vsc_kernels": functools.partial(_ours, method=method)}
                        if mode == "forward":
                            return {n: functools.partial(_forward, f, x, z, A, kl)
                                    for n, f in fns.items()}
                        return {n: functools.partial(_forward_backward, f, x, zg, Ag, kl)
                                for n, f in fns.items()}

                    out.append(common.Case(
                        op="linear_elbo",
                        params={"B": B, "J": J, "d": d, "D": D, "dtype": dtype_name,
                                "method": method, "mode": mode},
                        providers=("eager", "compiled", "vsc_kernels"), build=build,
                        work=flops(B, J, d, D, method, mode), unit="flops",
                        limit=functools.partial(gemm_limit, B, J, d, D, dtype_name,
                                                str(device))))
    return out


COLUMNS = [
    ("B", "B", "d"), ("J", "J", "d"), ("d", "d", "d"), ("D", "D", "d"),
    ("dtype", "dtype", "s"), ("method", "method", "s"), ("mode", "mode", "s"),
    ("provider", "provider", "s"), ("time_ms", "ms", ".3f"), ("TFLOPs", "TFLOP/s", ".2f"),
    ("fraction_of_limit", "of GEMM", ".1%"), ("speedup_vs_eager", "x eager", ".2f"),
    ("speedup_vs_compiled", "x compiled", ".2f"),
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fp32 only, fewer rounds")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", default=None, choices=list(DTYPES))
    parser.add_argument("--methods", nargs="+", default=None, choices=list(METHODS))
    common.add_timing_options(parser)
    args = parser.parse_args(argv)
    clock = common.apply_timing_options(args)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device(args.device)
    print(f"device: {common.device_name(device)}; backend: "
          f"{vsc_kernels.resolve_backend(None, device.type)}; load {common.load_average()}")
    rounds = args.rounds or (5 if args.quick else 11)
    rows = common.run_cases(cases(device, args.quick, args.dtypes, args.methods), device,
                            rounds=rounds, clock=clock)
    common.print_table(rows, COLUMNS)
    if not args.no_save:
        result = common.payload("linear_elbo", device, rows, quick=args.quick,
                                clock=clock.__name__,
                                threads=torch.get_num_threads(), rounds=rounds,
                                lam=LAM, base="laplace", z_density="about 0.1 (Laplace codes, "
                                "lam = ln 10)", kl="(B, J), no grad",
                                requires_grad=["z", "A"], tf32=False)
        name = common.result_name("linear_elbo", args.quick)
        print(f"wrote {common.write_results(name, device, result, directory=args.out)}")
    return rows


if __name__ == "__main__":
    main()
