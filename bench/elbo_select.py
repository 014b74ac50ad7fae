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

Providers of a group are timed in interleaved rounds (median), so that load on a shared
machine hits them alike.

    python bench/elbo_select.py            # every shape, fp32 and bf16, max and avg
    python bench/elbo_select.py --quick    # the paper's and the CelebA shape, fp32, max
"""

from __future__ import annotations

import argparse
import functools
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
QUICK_SHAPES = SHAPES[:2]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
METHODS = ["max", "avg"]
MODES = ("forward", "forward+backward")
BETA = 1.0


def _ours(x, x_hat, kl, method):
    return vsc_kernels.elbo_select(x, x_hat, kl, beta=BETA, method=method).loss


def _eager(x, x_hat, kl, method):
    return reference.elbo_select(x, x_hat, kl, beta=BETA, method=method).loss


@functools.lru_cache(maxsize=None)
def _compiled(method):
    return torch.compile(functools.partial(_eager, method=method), dynamic=False)


def bytes_moved(B, J, F, element_size, method, mode):
    forward = (B * J * F + B * F) * element_size + 4 * B * J
    read_rows = B if method == "max" else B * J
    backward = (B * F + read_rows * F + B * J * F) * element_size
    return forward if mode == "forward" else forward + backward


@functools.lru_cache(maxsize=1)
def _inputs(B, J, F, dtype_name, device_str):
    device = torch.device(device_str)
    dtype = DTYPES[dtype_name]
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(B, F, device=device, generator=g).to(dtype)
    x_hat = (x[:, None] + 0.3 * torch.randn(B, J, F, device=device, generator=g)).to(dtype)
    kl = torch.rand(B, J, device=device, generator=g)
    return x, x_hat.requires_grad_(), kl


def _forward(fn, x, x_hat, kl):
    with torch.no_grad():
        return fn(x, x_hat, kl)


def _forward_backward(fn, x, x_hat, kl):
    fn(x, x_hat, kl).backward()
    x_hat.grad = None


def cases(device: torch.device, quick: bool = False, dtypes=None, methods=None):
    dtypes = dtypes or (["fp32"] if quick else list(DTYPES))
    methods = methods or (["max"] if quick else METHODS)
    out = []
    for B, J, F in (QUICK_SHAPES if quick else SHAPES):
        for dtype_name in dtypes:
            element = torch.finfo(DTYPES[dtype_name]).bits // 8
            for method in methods:
                for mode in MODES:
                    def build(B=B, J=J, F=F, dtype_name=dtype_name, method=method, mode=mode):
                        x, x_hat, kl = _inputs(B, J, F, dtype_name, str(device))
                        fns = {"eager": functools.partial(_eager, method=method),
                               "compiled": _compiled(method),
                               "vsc_kernels": functools.partial(_ours, method=method)}
                        step = _forward if mode == "forward" else _forward_backward
                        return {name: functools.partial(step, fn, x, x_hat, kl)
                                for name, fn in fns.items()}

                    out.append(common.Case(
                        op="elbo_select",
                        params={"B": B, "J": J, "F": F, "dtype": dtype_name, "method": method,
                                "mode": mode},
                        providers=("eager", "compiled", "vsc_kernels"), build=build,
                        work=bytes_moved(B, J, F, element, method, mode), unit="bytes",
                        limit=functools.partial(common.cached_bandwidth_limit, str(device))))
    return out


COLUMNS = [
    ("B", "B", "d"), ("J", "J", "d"), ("F", "F", "d"), ("dtype", "dtype", "s"),
    ("method", "method", "s"), ("mode", "mode", "s"), ("provider", "provider", "s"),
    ("time_ms", "ms", ".3f"), ("effective_GBps", "GB/s", ".1f"),
    ("fraction_of_limit", "of limit", ".1%"), ("speedup_vs_eager", "x eager", ".2f"),
    ("speedup_vs_compiled", "x compiled", ".2f"),
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="the paper's and the CelebA shape, fp32, max, fewer rounds")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", default=None, choices=list(DTYPES))
    parser.add_argument("--methods", nargs="+", default=None, choices=["max", "avg", "iwae"])
    common.add_timing_options(parser)
    args = parser.parse_args(argv)
    clock = common.apply_timing_options(args)
    device = torch.device(args.device)
    limit, source = common.cached_bandwidth_limit(str(device))
    print(f"device: {common.device_name(device)}; hardware limit {limit / 1e9:.1f} GB/s "
          f"({source}); backend: {vsc_kernels.resolve_backend(None, device.type)}; "
          f"load {common.load_average()}")
    rounds = args.rounds or (7 if args.quick else 15)
    rows = common.run_cases(cases(device, args.quick, args.dtypes, args.methods), device,
                            rounds=rounds, clock=clock)
    common.print_table(rows, COLUMNS)
    if not args.no_save:
        result = common.payload("elbo_select", device, rows, quick=args.quick,
                                clock=clock.__name__,
                                threads=torch.get_num_threads(), rounds=rounds,
                                bandwidth_limit_GBps=limit / 1e9,
                                bandwidth_limit_source=source, beta=BETA, kl="(B, J)",
                                recon="sum")
        name = common.result_name("elbo_select", args.quick)
        print(f"wrote {common.write_results(name, device, result, directory=args.out)}")
    return rows


if __name__ == "__main__":
    main()
