"""Benchmark ``vsc_kernels.sparse_decode`` (forced sparse) against the dense
``torch.matmul`` in the same dtype, over the density of the codes, and find the
crossover density above which the dense product is faster.

Providers
    ``sparse``  ``sparse_decode(z, A, dense_above=1.0)``: CSR compression with torch
                (one host sync) + the CSR x dense kernel (Triton on CUDA, C++ on CPU)
    ``dense``   ``z @ A.T`` (cuBLAS / MKL or oneDNN) in the same dtype, timed right
                before ``sparse`` on the same inputs

Modes: ``forward``, and ``fwd+bwd`` (forward, then the gradients of ``z`` and ``A``:
``grad_z = grad_out @ A`` is dense for both providers, ``grad_A`` skips zeros for
``sparse``). Codes: N(0, 1) values at the given density, exact zeros elsewhere, rows
``N = B * J`` (B=512 x J=10 by default).

The crossover of a (d, D, dtype, mode) is interpolated linearly between the last
density where ``sparse`` is faster and the first where it is not ("<" the lowest or
">" the highest density when it never or always wins). The default ``dense_above``
table (``vsc_kernels.sparse_decode.CROSSOVER_DENSITY``) takes the lowest fwd+bwd
crossover over the shapes of a device and dtype (the suggestion is printed).

Hardware figures: ``dense`` reports its TFLOP/s (``2 N d D`` per product, three
products in fwd+bwd; the matrix-throughput side); ``sparse`` reports its useful TFLOP/s (``2 nnz D`` per sparse
product) and the bytes of the gathered rows (``nnz D`` elements per sparse product) per
second as a fraction of the memory-bandwidth limit (above 1: the rows came from cache).
``prep ms`` is the part of a ``sparse`` forward spent before the kernel: counting the
non-zeros (the host sync), plus building the CSR for Triton.

    python bench/sparse_decode.py                 # full sweep (GPU: ~minutes)
    python bench/sparse_decode.py --quick         # one small shape, fp32
    python bench/sparse_decode.py --device cpu --dtypes float32 --shapes 256x256,2048x1024
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import vsc_kernels  # noqa: E402
from bench import common  # noqa: E402
from vsc_kernels.sparse_decode import reference  # noqa: E402

DENSITIES = [0.01, 0.02, 0.05, 0.10, 0.20, 0.30, 0.50]
SHAPES = [(256, 256), (2048, 1024), (4096, 1024)]   # (d, D)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def make_inputs(N, d, D, density, dtype, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    z = torch.randn(N, d, generator=g, device=device)
    z = (z * (torch.rand(N, d, generator=g, device=device) < density)).to(dtype)
    A = (torch.randn(D, d, generator=g, device=device) / d ** 0.5).to(dtype)
    grad_out = torch.randn(N, D, generator=g, device=device).to(dtype)
    return z, A, grad_out


def timed(fn, device, repeats):
    if device.type == "cuda":
        return common.time_call(fn, device, warmup=3, repeats=repeats)
    return common.time_call(fn, device, warmup=1, repeats=repeats, min_seconds=0)


def modes(product, z, A, grad_out):
    zr, Ar = z.detach().clone().requires_grad_(), A.detach().clone().requires_grad_()

    def forward():
        with torch.no_grad():
            product(z, A)

    def fwd_bwd():
        zr.grad = Ar.grad = None
        product(zr, Ar).backward(grad_out)

    return {"forward": forward, "fwd+bwd": fwd_bwd}


def crossover(points):
    """``points``: [(density, sparse_s, dense_s)] sorted by density -> (value, note)."""
    previous = None
    for density, sparse_s, dense_s in points:
        ratio = sparse_s / dense_s
        if ratio >= 1.0:
            if previous is None:
                return density, f"< {density:g} (dense faster at every density)"
            p_density, p_ratio = previous
            value = p_density + (1.0 - p_ratio) * (density - p_density) / (ratio - p_ratio)
            return value, f"{value:.3f}"
        previous = (density, ratio)
    return points[-1][0], f"> {points[-1][0]:g} (sparse faster at every density)"


def run(device, N, shapes, dtypes, densities, repeats):
    torch.backends.cuda.matmul.allow_tf32 = False
    backend = vsc_kernels.resolve_backend(None, device.type)
    bandwidth, bandwidth_source = common.bandwidth_limit(device)
    print(f"device: {common.device_name(device)}; backend: {backend}; "
          f"bandwidth limit {bandwidth / 1e9:.0f} GB/s ({bandwidth_source})")
    rows, crossovers = [], []
    try:
        for d, D in shapes:
            for dtype_name in dtypes:
                dtype = DTYPES[dtype_name]
                elt = torch.finfo(dtype).bits // 8
                points = {"forward": [], "fwd+bwd": []}
                for density in densities:
                    z, A, grad_out = make_inputs(N, d, D, density, dtype, device)
                    nnz = int((z != 0).sum())

                    def prep():
                        count = int(torch.count_nonzero(z))
                        if backend == "triton":
                            reference.compress(z, count)

                    def sparse(z, A):
                        return vsc_kernels.sparse_decode(z, A, dense_above=1.0, backend=backend)

                    prep_s = timed(prep, device, repeats)
                    dense_modes = modes(lambda z, A: z @ A.T, z, A, grad_out)
                    for mode, fn in modes(sparse, z, A, grad_out).items():
                        # back to back, so that a change of load on a shared machine hits both
                        dense_s = timed(dense_modes[mode], device, repeats)
                        seconds = timed(fn, device, repeats)
                        products = 1 if mode == "forward" else 2   # forward, grad_A (sparse)
                        dense_flops = 2 * N * d * D * (1 if mode == "forward" else 3)
                        dense_row = dict(N=N, d=d, D=D, dtype=dtype_name, mode=mode,
                                         provider="dense", density=density, time_s=dense_s,
                                         TFLOPs=dense_flops / dense_s / 1e12)
                        sparse_row = dict(
                            N=N, d=d, D=D, dtype=dtype_name, mode=mode, provider="sparse",
                            density=density, nnz=nnz, time_s=seconds, prep_s=prep_s,
                            speedup_vs_dense=dense_s / seconds,
                            useful_TFLOPs=2 * nnz * D * products / seconds / 1e12,
                            gather_fraction_of_bandwidth=nnz * D * elt * products / seconds
                            / bandwidth)
                        rows.extend([dense_row, sparse_row])  # an interrupt keeps whole pairs
                        points[mode].append((density, seconds, dense_s))
                    del z, A, grad_out
                for mode, pts in points.items():
                    value, note = crossover(pts)
                    crossovers.append(dict(d=d, D=D, dtype=dtype_name, mode=mode,
                                           crossover_density=value, note=note))
    except KeyboardInterrupt:
        common.stop_at_interrupt()
    return rows, crossovers, backend, dict(value=bandwidth, source=bandwidth_source)


def suggested_table(crossovers, device_type):
    table = {}
    for c in crossovers:
        if c["mode"] == "fwd+bwd":
            key = f"({device_type!r}, torch.{c['dtype']})"
            table[key] = min(table.get(key, 1.0), c["crossover_density"])
    return table


def cases(device: torch.device, quick: bool = False) -> list[common.Case]:
    """pytest-benchmark cases: forced-sparse ``sparse_decode`` against the dense product at
    10% density (N = 5120 rows, float32), forward and fwd+bwd."""
    shapes = [(256, 256)] if quick else SHAPES[:2]
    out = []
    for d, D in shapes:
        for mode in ("forward", "fwd+bwd"):
            def build(d=d, D=D, mode=mode):
                z, A, grad_out = make_inputs(5120, d, D, 0.1, torch.float32, device)
                backend = vsc_kernels.resolve_backend(None, device.type)

                def sparse(z, A):
                    return vsc_kernels.sparse_decode(z, A, dense_above=1.0, backend=backend)

                return {"dense": modes(lambda z, A: z @ A.T, z, A, grad_out)[mode],
                        "vsc_kernels": modes(sparse, z, A, grad_out)[mode]}

            out.append(common.Case(
                op="sparse_decode", params={"N": 5120, "d": d, "D": D, "density": 0.1,
                                            "dtype": "fp32", "mode": mode},
                providers=("dense", "vsc_kernels"), build=build,
                work=2 * 5120 * d * D * (1 if mode == "forward" else 3), unit="flops",
                baselines=("dense",)))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small shape, float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per point (default 20 on CUDA, 3 on CPU)")
    parser.add_argument("--rows", type=int, default=5120, help="N = B * J (512 x 10)")
    parser.add_argument("--shapes", default=None, help="d x D list, e.g. 256x256,2048x1024")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--densities", default=None, help="e.g. 0.01,0.1,0.3")
    parser.add_argument("--out", default=None, help="results folder (default bench/results)")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    repeats = args.repeats or (20 if device.type == "cuda" else 3)
    shapes = SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    dtypes = args.dtypes.split(",")
    densities = DENSITIES if not args.densities else [float(v) for v in args.densities.split(",")]
    N = args.rows
    if args.quick:
        N, shapes, dtypes, densities = 1024, [(256, 256)], ["float32"], [0.02, 0.1, 0.3]
    rows, crossovers, backend, bandwidth = run(device, N, shapes, dtypes, densities, repeats)
    shown = [dict(r, time_ms=r["time_s"] * 1e3,
                  prep_ms=r["prep_s"] * 1e3 if "prep_s" in r else None) for r in rows]
    common.print_table(shown, [
        ("d", "d", "d"), ("D", "D", "d"), ("dtype", "dtype", "s"), ("mode", "mode", "s"),
        ("provider", "provider", "s"), ("density", "density", ".2f"), ("time_ms", "ms", ".3f"),
        ("prep_ms", "prep ms", ".3f"), ("speedup_vs_dense", "x dense", ".2f"),
        ("TFLOPs", "dense TF/s", ".2f"), ("useful_TFLOPs", "useful TF/s", ".3f"),
        ("gather_fraction_of_bandwidth", "gather/BW", ".2f"),
    ])
    print("\ncrossover density (sparse slower above it):")
    for c in crossovers:
        print(f"  d={c['d']:5d} D={c['D']:5d} {c['dtype']:9s} {c['mode']:8s} {c['note']}")
    table = suggested_table(crossovers, device.type)
    print("suggested CROSSOVER_DENSITY entries (lowest fwd+bwd crossover over the shapes):")
    for key, value in table.items():
        print(f"  {key}: {value:.3f},")
    if not args.no_save:
        payload = {"op": "sparse_decode", "environment": common.environment(device),
                   "quick": args.quick,
                   "backend": backend, "rows": N, "shapes_dD": shapes, "dtypes": dtypes,
                   "densities": densities, "repeats": repeats, "bandwidth_limit": bandwidth,
                   "crossovers": crossovers, "suggested_crossover_table": table,
                   "results": rows}
        name = common.result_name("sparse_decode", args.quick)
        print(f"wrote {common.write_results(name, device, payload, directory=args.out)}")


if __name__ == "__main__":
    main()
