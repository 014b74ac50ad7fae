"""Benchmark ``vsc_kernels.threshold_sample`` against the eager PyTorch reference and
``torch.compile`` of it.

Providers
    ``vsc_kernels``  the fused op (Triton on CUDA, C++/OpenMP on CPU)
    ``eager``        the reference's equations with torch's RNG, eq. (4) with ``detach``:
                     what a user writes by hand (``reference.threshold_sample(noise="torch")``)
    ``compiled``     ``torch.compile`` of ``eager``
    ``oracle``       the test oracle (Philox emulated in PyTorch); small shapes only

Modes: ``forward`` and ``forward+backward``. Effective bandwidth counts the bytes a
fused implementation must move (read mu, logb; write z; read grad_z; write grad_mu,
grad_logb) and is compared with the hardware limit (nominal HBM bandwidth on known
GPUs, a measured copy bandwidth elsewhere). Providers of a group are timed in
interleaved rounds (median), so that load on a shared machine hits them alike.

    python bench/threshold_sample.py            # paper and large shapes, fp32 and bf16
    python bench/threshold_sample.py --quick    # both shapes, fp32, fewer rounds
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
from vsc_kernels.threshold_sample import reference  # noqa: E402

SHAPES = [  # (B, J, d): the paper's linear generator, and a large DNN-sized case
    (100, 20, 256),
    (4096, 20, 1024),
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LAM = 0.25  # the paper's thresholded-Laplacian lambda_0 (Appendix D)
MODES = ("forward", "forward+backward")


def bytes_moved(B, J, d, element_size, mode):
    forward = (2 * B * d + B * J * d) * element_size
    backward = (B * J * d + 4 * B * d) * element_size
    return forward if mode == "forward" else forward + backward


@functools.lru_cache(maxsize=1)
def _inputs(B, J, d, dtype_name, device_str):
    device = torch.device(device_str)
    dtype = DTYPES[dtype_name]
    g = torch.Generator(device=device).manual_seed(0)
    mu = torch.randn(B, d, device=device, generator=g).to(dtype).requires_grad_()
    logb = (0.3 * torch.randn(B, d, device=device, generator=g) - 1).to(dtype).requires_grad_()
    grad = torch.randn(B, J, d, device=device, generator=g).to(dtype)
    return mu, logb, grad


@functools.lru_cache(maxsize=1)
def _compiled(J):
    torch._dynamo.reset()
    return torch.compile(functools.partial(_eager, J=J), dynamic=False)


def _eager(mu, logb, J):
    return reference.threshold_sample(mu, logb, LAM, num_samples=J, noise="torch")


def _providers(J, numel):
    def ours(mu, logb):
        return vsc_kernels.threshold_sample(mu, logb, LAM, num_samples=J)

    def oracle(mu, logb):
        seed = vsc_kernels._philox.draw_seed(mu.device)
        return reference.threshold_sample(mu, logb, LAM, num_samples=J, seed=seed)

    result = {"eager": functools.partial(_eager, J=J), "compiled": _compiled(J),
              "vsc_kernels": ours}
    if numel <= 2_000_000:
        result["oracle"] = oracle
    return result


def cases(device: torch.device, quick: bool = False, dtypes=None) -> list[common.Case]:
    dtypes = dtypes or (["fp32"] if quick else list(DTYPES))
    out = []
    for B, J, d in SHAPES:
        for dtype_name in dtypes:
            element = torch.finfo(DTYPES[dtype_name]).bits // 8
            for mode in MODES:
                def build(B=B, J=J, d=d, dtype_name=dtype_name, mode=mode):
                    mu, logb, grad = _inputs(B, J, d, dtype_name, str(device))
                    calls = {}
                    for name, fn in _providers(J, B * J * d).items():
                        if quick and name == "oracle":
                            continue
                        if mode == "forward":
                            calls[name] = functools.partial(_forward, fn, mu, logb)
                        else:
                            calls[name] = functools.partial(_forward_backward, fn, mu, logb, grad)
                    return calls

                providers = ("eager", "compiled", "vsc_kernels")
                if not quick and B * J * d <= 2_000_000:
                    providers += ("oracle",)
                out.append(common.Case(
                    op="threshold_sample",
                    params={"B": B, "J": J, "d": d, "dtype": dtype_name, "mode": mode},
                    providers=providers, build=build,
                    work=bytes_moved(B, J, d, element, mode), unit="bytes",
                    limit=functools.partial(common.cached_bandwidth_limit, str(device))))
    return out


def _forward(fn, mu, logb):
    with torch.no_grad():
        return fn(mu, logb)


def _forward_backward(fn, mu, logb, grad):
    torch.autograd.backward(fn(mu, logb), grad)
    mu.grad = logb.grad = None


COLUMNS = [
    ("B", "B", "d"), ("J", "J", "d"), ("d", "d", "d"), ("dtype", "dtype", "s"),
    ("mode", "mode", "s"), ("provider", "provider", "s"), ("time_ms", "ms", ".3f"),
    ("effective_GBps", "GB/s", ".1f"), ("fraction_of_limit", "of limit", ".1%"),
    ("speedup_vs_eager", "x eager", ".2f"), ("speedup_vs_compiled", "x compiled", ".2f"),
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fp32 only, fewer rounds, no oracle (about a minute on 2 cores)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", default=None, choices=list(DTYPES))
    common.add_timing_options(parser)
    args = parser.parse_args(argv)
    clock = common.apply_timing_options(args)
    device = torch.device(args.device)
    limit, source = common.cached_bandwidth_limit(str(device))
    print(f"device: {common.device_name(device)}; hardware limit {limit / 1e9:.1f} GB/s "
          f"({source}); backend: {vsc_kernels.resolve_backend(None, device.type)}; "
          f"load {common.load_average()}")
    rounds = args.rounds or (7 if args.quick else 15)
    rows = common.run_cases(cases(device, args.quick, args.dtypes), device, rounds=rounds,
                            clock=clock)
    common.print_table(rows, COLUMNS)
    if not args.no_save:
        result = common.payload("threshold_sample", device, rows, quick=args.quick,
                                clock=clock.__name__,
                                threads=torch.get_num_threads(),
                                rounds=rounds, bandwidth_limit_GBps=limit / 1e9,
                                bandwidth_limit_source=source, lam=LAM, base="laplace",
                                estimator="straight")
        name = common.result_name("threshold_sample", args.quick)
        print(f"wrote {common.write_results(name, device, result, directory=args.out)}")
    return rows


if __name__ == "__main__":
    main()
