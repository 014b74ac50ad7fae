"""Benchmark ``vsc_kernels.fista`` against NumPy FISTA, eager PyTorch FISTA and
scikit-learn's ``sparse_encode``.

Providers
    ``vsc_kernels``  the fused solver (Triton persistent kernel on CUDA, C++/OpenMP on CPU)
    ``torch_eager``  the reference: eager PyTorch FISTA from the Gram matrix, same device
    ``numpy``        FISTA as the paper's public code runs it: NumPy, two products with A
                     per iteration (re-implemented here from Beck & Teboulle's algorithm)
    ``sklearn``      ``sklearn.decomposition.sparse_encode(algorithm="lasso_cd")``, timed on
                     ``--sklearn-rows`` rows and scaled to the batch (marked in the output)

Modes: ``500 iterations`` (tol=0, every row runs 500) and ``to tolerance`` (tol=1e-3).
The hardware limit is the measured float32 matrix-multiply throughput of this device on
the same product shape (B x d times d x d), so "of limit" is the fraction of GEMM speed
each FISTA iteration reaches (an iteration costs 2 B d^2 flops for ``G y``).

With ``d > 2 D`` (the second shape) the C++ solver multiplies by ``A^T`` and ``A`` each
iteration (``2 B d D`` flops) instead of the Gram matrix (``B d^2``); the throughput column
still counts the Gram formulation's flops, so it can exceed the GEMM limit there.

    python bench/fista.py            # B=16000, d=D=256 and B=4096, d=1024, D=256
    python bench/fista.py --quick    # B=2000, d=D=256 and B=1024, d=1024, D=256
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import vsc_kernels  # noqa: E402
from bench import common  # noqa: E402
from vsc_kernels.fista import reference  # noqa: E402

SHAPES = [(16000, 256, 256), (4096, 1024, 256)]  # (B, d, D)
LAM = 0.2  # about 10% non-zeros on these problems; the value does not change the cost per iteration


def numpy_fista(x, A, lam, max_iter, tol):
    """FISTA with products by A and A^T each iteration (no Gram matrix), NumPy float32."""
    L = np.linalg.norm(A, 2) ** 2
    z_prev = np.zeros((x.shape[0], A.shape[1]), dtype=x.dtype)
    y = z_prev.copy()
    t = 1.0
    for _ in range(max_iter):
        grad = (y @ A.T - x) @ A
        v = y - grad / L
        z = np.sign(v) * np.maximum(np.abs(v) - lam / L, 0)
        t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
        y = z + ((t - 1) / t_next) * (z - z_prev)
        change = np.linalg.norm(z - z_prev) / max(np.linalg.norm(z), 1e-12)
        z_prev, t = z, t_next
        if change < tol:
            break
    return z_prev


def problem(B, d, D, device):
    g = torch.Generator().manual_seed(0)
    A = torch.randn(D, d, generator=g)
    A = A / A.norm(dim=0)
    codes = torch.randn(B, d, generator=g) * (torch.rand(B, d, generator=g) < 0.1)
    x = codes @ A.T + 0.1 * torch.randn(B, D, generator=g)
    return x.to(device), A.to(device)


def gemm_flops(B, d, device):
    y = torch.randn(B, d, device=device)
    gram = torch.randn(d, d, device=device)
    out = torch.empty(B, d, device=device)
    seconds = common.time_call(lambda: torch.mm(y, gram, out=out), device, repeats=10)
    return 2 * B * d * d / seconds


def run(device, shapes, sklearn_rows, repeats, max_iter, clock=time.perf_counter):
    torch.backends.cuda.matmul.allow_tf32 = False
    rows_out = []
    backend = vsc_kernels.resolve_backend(None, device.type)
    print(f"device: {common.device_name(device)}; backend: {backend}; "
          f"load {common.load_average()}")
    try:
        for B, d, D in shapes:
            x, A = problem(B, d, D, device)
            limit = gemm_flops(B, d, device)
            x_np, A_np = x.cpu().numpy(), A.cpu().numpy()
            for mode, tol in ((f"{max_iter} iterations", 0.0), ("to tolerance", 1e-3)):
                calls = {
                    "vsc_kernels": lambda: vsc_kernels.fista(x, A, LAM, max_iter=max_iter,
                                                             tol=tol),
                    "torch_eager": lambda: vsc_kernels.fista(x, A, LAM, max_iter=max_iter,
                                                             tol=tol, backend="reference"),
                    "numpy": lambda: numpy_fista(x_np, A_np, LAM, max_iter, tol),
                }
                results = {name: call() for name, call in calls.items()}  # warm-up, iters
                # interleaved rounds: load on a shared machine hits every provider alike
                times = common.time_interleaved(calls, device, rounds=repeats,
                                                round_seconds=0.0, warmup=0, clock=clock)
                group = []
                for name in calls:
                    result = results[name] if name != "numpy" else None
                    iterations = (result.n_iter.float().mean().item() if result is not None
                                  else None)
                    group.append(row(B, d, D, mode, name, times[name], iterations, limit))
                group[0]["backend"] = backend
                rows_out.extend(group)  # whole groups only: an interrupt keeps them
                if common.interrupted:  # during this group's rounds (time_interleaved)
                    raise KeyboardInterrupt
                if sklearn_rows:
                    rows_out.append(sklearn_row(x_np, A_np, B, d, D, mode, max_iter, tol,
                                                sklearn_rows, limit))
    except KeyboardInterrupt:
        common.stop_at_interrupt()
    return common.add_speedups(rows_out, ("B", "d", "mode"), ("torch_eager", "numpy"),
                               time_key="time_s")


def row(B, d, D, mode, name, seconds, iterations, limit):
    flops = 2 * B * d * d * iterations if iterations is not None else None
    return {"B": B, "d": d, "D": D, "mode": mode, "provider": name, "time_s": seconds,
            "mean_iterations": iterations,
            "GFLOPs": flops / seconds / 1e9 if flops is not None else None,
            "fraction_of_gemm": flops / seconds / limit if iterations is not None else None,
            "gemm_limit_GFLOPs": limit / 1e9}


def sklearn_row(x_np, A_np, B, d, D, mode, max_iter, tol, rows, limit):
    from sklearn.decomposition import sparse_encode

    rows = min(rows, B)
    # sklearn's Lasso objective is (1 / (2 D)) ||x - A z||^2 + alpha ||z||_1.
    start = time.perf_counter()
    sparse_encode(x_np[:rows], A_np.T, algorithm="lasso_cd", alpha=LAM / D,
                  max_iter=max_iter, n_jobs=None)
    seconds = (time.perf_counter() - start) * B / rows
    result = row(B, d, D, mode, "sklearn", seconds, None, limit)
    result["note"] = f"timed on {rows} rows, scaled to {B}; coordinate descent, own stopping rule"
    return result


def cases(device: torch.device, quick: bool = False, max_iter: int = 100) -> list[common.Case]:
    """pytest-benchmark cases: ``max_iter`` iterations at tol=0 (every row runs them), per
    shape; providers ``torch_eager`` (the reference, the baseline), ``numpy`` and
    ``vsc_kernels``. Throughput: the ``2 B d^2`` flops of ``G y`` per iteration (what the
    Gram-matrix formulation does) against the measured GEMM of that shape."""
    shapes = [(2000, 256, 256), (1024, 1024, 256)] if quick else SHAPES
    out = []
    for B, d, D in shapes:
        def build(B=B, d=d, D=D):
            x, A = problem(B, d, D, device)
            x_np, A_np = x.cpu().numpy(), A.cpu().numpy()
            return {
                "torch_eager": lambda: vsc_kernels.fista(x, A, LAM, max_iter=max_iter, tol=0.0,
                                                         backend="reference"),
                "numpy": lambda: numpy_fista(x_np, A_np, LAM, max_iter, 0.0),
                "vsc_kernels": lambda: vsc_kernels.fista(x, A, LAM, max_iter=max_iter, tol=0.0),
            }

        out.append(common.Case(
            op="fista", params={"B": B, "d": d, "D": D, "mode": f"{max_iter} iterations"},
            providers=("torch_eager", "numpy", "vsc_kernels"), build=build,
            work=2 * B * d * d * max_iter, unit="flops",
            limit=functools.partial(_gemm_limit, B, d, str(device)),
            baselines=("torch_eager", "numpy")))
    return out


@functools.lru_cache(maxsize=None)
def _gemm_limit(B, d, device_str):
    return gemm_flops(B, d, torch.device(device_str)), f"measured float32 GEMM ({B}x{d})x({d}x{d})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sklearn-rows", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-iter", type=int, default=500,
                        help="iteration cap (500 as in the issue; less for slow CPUs)")
    common.add_timing_options(parser, rounds=False)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    shapes = [(2000, 256, 256), (1024, 1024, 256)] if args.quick else SHAPES
    clock = common.apply_timing_options(args)
    rows = run(device, shapes, args.sklearn_rows, args.repeats, args.max_iter, clock=clock)
    common.print_table(rows, [
        ("B", "B", "d"), ("d", "d", "d"), ("D", "D", "d"), ("mode", "mode", "s"),
        ("provider", "provider", "s"), ("time_s", "s", ".3f"),
        ("mean_iterations", "iters", ".0f"), ("GFLOPs", "GFLOP/s", ".1f"),
        ("fraction_of_gemm", "of GEMM", ".1%"),
        ("speedup_vs_torch_eager", "x eager", ".2f"), ("speedup_vs_numpy", "x numpy", ".2f"),
    ])
    if not args.no_save:
        payload = {"op": "fista", "environment": common.environment(device), "lam": LAM,
                   "dtype": "float32", "max_iter": args.max_iter, "quick": args.quick,
                   "threads": torch.get_num_threads(),
                   "clock": clock.__name__,
                   "results": rows}
        name = common.result_name("fista", args.quick)
        print(f"wrote {common.write_results(name, device, payload, directory=args.out)}")


if __name__ == "__main__":
    main()
