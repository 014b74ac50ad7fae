"""Benchmark ``vsc_kernels.elbo_select`` against the eager materializing reference and
``torch.compile`` of it.

Providers
    ``vsc_kernels``  the fused op (Triton on CUDA, C++/OpenMP on CPU)
    ``eager``        :func:`vsc_kernels.elbo_select.reference.elbo_select`: ``x_hat - x``
                     materialized, autograd backward (what a user writes by hand)
    ``compiled``     ``torch.compile`` of ``eager``

Modes: ``forward`` and ``forward+backward`` (``x_hat`` requires grad, ``x`` does not, as
data). Effective bandwidth counts the bytes a fused implementation must move -- forward:
read ``x_hat`` and ``x``; backward: read ``x``, read the ``x_hat`` rows whose gradient is
not zero (one sample per row for ``max``, all ``J`` for ``avg``), write ``grad x_hat`` --
and is compared with the hardware limit (nominal HBM bandwidth on known GPUs, a measured
copy bandwidth elsewhere).

Shapes ``(B, J, F)``: the paper's linear-generator size, a CelebA decoder output
(3 x 64 x 64) and an FMNIST one (28 x 28).

    python bench/elbo_select.py            # every shape, fp32 and bf16, max and avg
    python bench/elbo_select.py --quick    # the first shape only (not saved)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import vsc_kernels  # noqa: E402
from bench import common  # noqa: E402
from vsc_kernels.elbo_select import reference  # noqa: E402

SHAPES = [  # (B, J, F)
    (100, 20, 256),
    (512, 10, 3 * 64 * 64),
    (512, 20, 28 * 28),
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
METHODS = ["max", "avg"]
BETA = 1.0


def providers(method):
    def ours(x, x_hat, kl):
        return vsc_kernels.elbo_select(x, x_hat, kl, beta=BETA, method=method).loss

    def eager(x, x_hat, kl):
        return reference.elbo_select(x, x_hat, kl, beta=BETA, method=method).loss

    return {"vsc_kernels": ours, "eager": eager,
            "compiled": torch.compile(eager, dynamic=False)}


def bytes_moved(B, J, F, element_size, method, mode):
    forward = (B * J * F + B * F) * element_size + 4 * B * J
    read_rows = B if method == "max" else B * J
    backward = (B * F + read_rows * F + B * J * F) * element_size
    return forward if mode == "forward" else forward + backward


def run(device, shapes, dtypes, methods, repeats):
    limit, limit_source = common.bandwidth_limit(device)
    print(f"device: {common.device_name(device)}; hardware limit {limit / 1e9:.1f} GB/s "
          f"({limit_source}); backend: {vsc_kernels.resolve_backend(None, device.type)}")
    rows = []
    for B, J, F in shapes:
        for dtype_name in dtypes:
            dtype = DTYPES[dtype_name]
            torch._dynamo.reset()
            g = torch.Generator(device=device).manual_seed(0)
            x = torch.randn(B, F, device=device, generator=g).to(dtype)
            x_hat = (x[:, None] + 0.3 * torch.randn(B, J, F, device=device, generator=g)).to(dtype)
            x_hat.requires_grad_()
            kl = torch.rand(B, J, device=device, generator=g)
            for method in methods:
                for name, fn in providers(method).items():
                    def forward(fn=fn):
                        with torch.no_grad():
                            return fn(x, x_hat, kl)

                    def forward_backward(fn=fn):
                        fn(x, x_hat, kl).backward()
                        x_hat.grad = None

                    for mode, call in (("forward", forward),
                                       ("forward+backward", forward_backward)):
                        seconds = common.time_call(call, device, repeats=repeats)
                        moved = bytes_moved(B, J, F, x_hat.element_size(), method, mode)
                        peak = common.peak_memory(call, device)
                        rows.append({
                            "B": B, "J": J, "F": F, "dtype": dtype_name, "method": method,
                            "mode": mode, "provider": name, "time_ms": seconds * 1e3,
                            "effective_GBps": moved / seconds / 1e9,
                            "fraction_of_limit": moved / seconds / limit,
                            "peak_memory_MB": None if peak is None else peak / 2**20,
                        })
    common.add_speedups(rows, ("B", "J", "F", "dtype", "method", "mode"), ("eager", "compiled"))
    return rows, limit, limit_source


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the first shape only")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=["max", "avg", "iwae"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (CPU); default: torch's")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shapes = SHAPES[:1] if args.quick else SHAPES
    rows, limit, limit_source = run(device, shapes, args.dtypes, args.methods, args.repeats)
    common.print_table(rows, [
        ("B", "B", "d"), ("J", "J", "d"), ("F", "F", "d"), ("dtype", "dtype", "s"),
        ("method", "method", "s"), ("mode", "mode", "s"), ("provider", "provider", "s"),
        ("time_ms", "ms", ".3f"), ("effective_GBps", "GB/s", ".1f"),
        ("fraction_of_limit", "of limit", ".1%"), ("peak_memory_MB", "peak MB", ".1f"),
        ("speedup_vs_eager", "x eager", ".2f"), ("speedup_vs_compiled", "x compiled", ".2f"),
    ])
    if not args.no_save and not args.quick:
        payload = {"op": "elbo_select", "environment": common.environment(device),
                   "bandwidth_limit_GBps": limit / 1e9, "bandwidth_limit_source": limit_source,
                   "beta": BETA, "kl": "(B, J)", "recon": "sum", "results": rows}
        print(f"wrote {common.write_results('elbo_select', device, payload)}")


if __name__ == "__main__":
    main()
