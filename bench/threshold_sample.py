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
GPUs, a measured copy bandwidth elsewhere).

    python bench/threshold_sample.py            # paper and large shapes, fp32 and bf16
    python bench/threshold_sample.py --quick    # paper shape only
"""

from __future__ import annotations

import argparse
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


def providers(device, J, numel):
    def ours(mu, logb):
        return vsc_kernels.threshold_sample(mu, logb, LAM, num_samples=J)

    def eager(mu, logb):
        return reference.threshold_sample(mu, logb, LAM, num_samples=J, noise="torch")

    def oracle(mu, logb):
        seed = vsc_kernels._philox.draw_seed(device)
        return reference.threshold_sample(mu, logb, LAM, num_samples=J, seed=seed)

    result = {"vsc_kernels": ours, "eager": eager,
              "compiled": torch.compile(eager, dynamic=False)}
    if numel <= 2_000_000:
        result["oracle"] = oracle
    return result


def bytes_moved(B, J, d, element_size, mode):
    forward = (2 * B * d + B * J * d) * element_size
    backward = (B * J * d + 4 * B * d) * element_size
    return forward if mode == "forward" else forward + backward


def run(device, shapes, dtypes, repeats):
    limit, limit_source = common.bandwidth_limit(device)
    print(f"device: {common.device_name(device)}; hardware limit {limit / 1e9:.1f} GB/s "
          f"({limit_source}); backend: {vsc_kernels.resolve_backend(None, device.type)}")
    rows = []
    for B, J, d in shapes:
        for dtype_name in dtypes:
            dtype = DTYPES[dtype_name]
            torch._dynamo.reset()
            mu = torch.randn(B, d, device=device, dtype=dtype, requires_grad=True)
            logb = (0.3 * torch.randn(B, d, device=device) - 1).to(dtype).requires_grad_()
            grad = torch.randn(B, J, d, device=device, dtype=dtype)
            for name, fn in providers(device, J, B * J * d).items():
                modes = {
                    "forward": lambda fn=fn: fn(mu.detach(), logb.detach()),
                    "forward+backward": lambda fn=fn: torch.autograd.backward(fn(mu, logb), grad),
                }
                for mode, call in modes.items():
                    seconds = common.time_call(call, device, repeats=repeats)
                    moved = bytes_moved(B, J, d, mu.element_size(), mode)
                    peak = common.peak_memory(call, device)
                    rows.append({
                        "B": B, "J": J, "d": d, "dtype": dtype_name, "mode": mode,
                        "provider": name, "time_ms": seconds * 1e3,
                        "effective_GBps": moved / seconds / 1e9,
                        "fraction_of_limit": moved / seconds / limit,
                        "peak_memory_MB": None if peak is None else peak / 2**20,
                    })
                    mu.grad = logb.grad = None
    common.add_speedups(rows, ("B", "J", "d", "dtype", "mode"), ("eager", "compiled"))
    return rows, limit, limit_source


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the paper's shape only")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    shapes = SHAPES[:1] if args.quick else SHAPES
    rows, limit, limit_source = run(device, shapes, args.dtypes, args.repeats)
    common.print_table(rows, [
        ("B", "B", "d"), ("J", "J", "d"), ("d", "d", "d"), ("dtype", "dtype", "s"),
        ("mode", "mode", "s"), ("provider", "provider", "s"), ("time_ms", "ms", ".3f"),
        ("effective_GBps", "GB/s", ".1f"), ("fraction_of_limit", "of limit", ".1%"),
        ("peak_memory_MB", "peak MB", ".1f"), ("speedup_vs_eager", "x eager", ".2f"),
        ("speedup_vs_compiled", "x compiled", ".2f"),
    ])
    if not args.no_save and not args.quick:
        payload = {"op": "threshold_sample", "environment": common.environment(device),
                   "bandwidth_limit_GBps": limit / 1e9, "bandwidth_limit_source": limit_source,
                   "lam": LAM, "base": "laplace", "estimator": "straight", "results": rows}
        print(f"wrote {common.write_results('threshold_sample', device, payload)}")


if __name__ == "__main__":
    main()
