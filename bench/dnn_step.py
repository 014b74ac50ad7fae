"""Benchmark one DNN-generator training step (forward, selection over J, backward, Adam)
for the Fashion-MNIST networks of Table 5 at J = 20, against the same step written as the
paper's public code writes it.

Providers
    ``public``         the public code's pattern (``model/reparameterization.py``), written
                       here in plain PyTorch: ``shift``/``logscale`` repeated J times, eager
                       noise and thresholding with ``nonzero`` indexing, the KL per element
                       ``(B, J, d)``, all ``B*J`` images decoded with gradients, the
                       ``(B, J, F)`` squared error materialized (``F.mse_loss(...,
                       reduction="none")``), one-hot weights of the arg-min, autograd
                       through everything.
    ``ours_all``       :class:`vsc.dnn.objective.SparseAutoencoder` with ``decode="all"``:
                       ``vsc_kernels.threshold_sample`` (fused sampling and KL) and
                       ``vsc_kernels.elbo_select`` (selection without the ``(B, J, F)``
                       difference); the ``B*J`` images decoded with gradients. Same gradient
                       as ``public`` (the public code's, batch-norm statistics included).
    ``ours_selected``  the trainer's default for max sampling: the ``B*J`` images decoded
                       without gradients, only the ``B`` selected ones again with gradients
                       (batch-norm statistics of the ``B*J`` batch replayed as constants;
                       see :mod:`vsc.dnn.objective` for what that changes in the gradient,
                       reported here as its cosine with the full gradient).

All three use the same networks (the public code's layers, checked in
``tests/test_vsc_dnn_public.py``), the thresholded Gaussian prior (lam 0.52, 10% non-zero),
beta 1e-2, Adam (3e-4, betas (0.5, 0.999), weight decay 1e-5) and the same estimator
(the public code's straight-through).

Reported: images per second (``B`` over the median step time; the providers take turns,
one step each per round, so that a change in a shared machine's load touches all alike)
and peak memory (CUDA:
``max_memory_allocated`` during a step; CPU: the peak resident set size of a fresh process
that runs the provider, ``VmHWM``, so it includes the interpreter and the model).

    python bench/dnn_step.py                         # CPU: B=64 (2-core machines), fp32
    python bench/dnn_step.py --device cuda           # GPU: B=512, bf16 autocast
    python bench/dnn_step.py --quick                 # B=16, not saved
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from vsc.dnn.objective import SparseAutoencoder  # noqa: E402
from vsc.priors import make_prior  # noqa: E402

LAMBDA, PRIOR_VARIANCE, BETA = 0.52, 0.1, 1e-2
PROVIDERS = ("public", "ours_all", "ours_selected")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def public_pattern_loss(model: SparseAutoencoder, x: torch.Tensor, J: int) -> torch.Tensor:
    """The public code's step (``VIEncoder.forward`` -> ``sample_gaussian`` ->
    ``compute_kl``/``compute_recon_loss``/``compute_loss``), written from its description."""
    heads = model.encoder(x)
    shift = heads["mu"][:, None].repeat(1, J, 1)                # (B, J, d), materialized
    logscale = heads["logb"][:, None].repeat(1, J, 1)
    scale = torch.exp(0.5 * logscale)
    eps = torch.randn_like(scale)
    z = shift + eps * scale
    lam = torch.full_like(z, LAMBDA)
    v = eps * scale.detach()
    z_thresh = F.relu(v.abs() - lam) * torch.sign(v)
    nonzero = torch.nonzero(z_thresh, as_tuple=True)
    z_thresh[nonzero] = shift[nonzero] + z_thresh[nonzero]
    z = z + z_thresh - z.detach()                               # straight-through
    logvar_prior = torch.log(torch.tensor(PRIOR_VARIANCE))
    kl = -0.5 * (1 + logscale - logvar_prior) + 0.5 * (shift ** 2 + logscale.exp()) / PRIOR_VARIANCE
    x_rep = x[:, None].repeat(1, J, 1, 1, 1)
    x_hat = model.decoder(z)                                    # (B, J, C, H, W)
    recon = F.mse_loss(x_hat, x_rep, reduction="none").reshape(x.shape[0], J, -1)
    log_loss = recon.mean(-1) + BETA * kl.sum(-1)
    index = torch.argmin(log_loss, dim=-1).detach()
    weight = torch.zeros_like(log_loss)
    weight[torch.arange(len(z)), index] = 1
    return (weight * log_loss).sum(-1).mean()


def build(provider: str, latent_dim: int, J: int, device: torch.device):
    torch.manual_seed(0)
    prior = make_prior("thresholded_gaussian", latent_dim, threshold=LAMBDA,
                       prior_scale=PRIOR_VARIANCE, warmup_start=1.0, estimator="straight_shift")
    decode = "selected" if provider == "ours_selected" else "all"
    model = SparseAutoencoder("fmnist", latent_dim, prior, num_samples=J, beta=BETA,
                              decode=decode).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4, betas=(0.5, 0.999),
                                 weight_decay=1e-5)
    return model, optimizer


def step_fn(provider, model, optimizer, x, J, dtype):
    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = (public_pattern_loss(model, x, J) if provider == "public"
                    else model(x, 0).loss)
        loss.backward()
        optimizer.step()
    return step


def batch(B: int, device: torch.device) -> torch.Tensor:
    from vsc.datasets import load_image_dataset

    images = load_image_dataset("digits", "train").images()
    return images[torch.arange(B) % len(images)].to(device)


def peak_rss_in_child(provider, args) -> int:
    """Peak resident set size (bytes) of a fresh process running three steps."""
    command = [sys.executable, __file__, "--child", provider, "--batch", str(args.batch),
               "--latent-dim", str(args.latent_dim), "--samples", str(args.samples),
               "--dtype", args.dtype, "--device", "cpu"]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return int(json.loads(out.strip().splitlines()[-1])["vm_hwm"])


def child(args) -> None:
    device = torch.device("cpu")
    model, optimizer = build(args.child, args.latent_dim, args.samples, device)
    step = step_fn(args.child, model, optimizer, batch(args.batch, device), args.samples,
                   DTYPES[args.dtype])
    for _ in range(3):
        step()
    status = Path("/proc/self/status").read_text()
    hwm = next(int(line.split()[1]) * 1024 for line in status.splitlines()
               if line.startswith("VmHWM"))
    print(json.dumps({"vm_hwm": hwm}))


def gradient_agreement(latent_dim, J, x, dtype) -> float:
    """Cosine between the parameter gradients of decode="selected" and decode="all"
    for the same noise (what the selected decode drops: the batch-statistics path)."""
    grads = []
    for provider in ("ours_all", "ours_selected"):
        model, _ = build(provider, latent_dim, J, x.device)
        torch.manual_seed(1)
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(x, 0).loss
        loss.backward()
        grads.append(torch.cat([p.grad.flatten().float() for p in model.parameters()]))
    return float(F.cosine_similarity(grads[0], grads[1], dim=0))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="B (default 512 CUDA, 64 CPU)")
    parser.add_argument("--latent-dim", type=int, default=256)
    parser.add_argument("--samples", type=int, default=20, help="J (Appendix E: 20)")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None,
                        help="autocast dtype (default bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="B=16, few repeats, not saved")
    common.add_timing_options(parser, rounds=False)
    parser.add_argument("--child", choices=PROVIDERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    args.dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    args.batch = args.batch or (16 if args.quick else 512 if device.type == "cuda" else 64)
    clock = common.apply_timing_options(args)
    if args.child:
        return child(args)
    repeats = args.repeats or (3 if args.quick else 20 if device.type == "cuda" else 7)
    dtype = DTYPES[args.dtype]
    x = batch(args.batch, device)
    steps = {}
    for provider in PROVIDERS:
        model, optimizer = build(provider, args.latent_dim, args.samples, device)
        steps[provider] = step_fn(provider, model, optimizer, x, args.samples, dtype)
    # Round robin: one step of each provider per round, so that a change of the machine's
    # load (shared CPUs) touches every provider alike; the median over the rounds.
    samples = {provider: [] for provider in PROVIDERS}
    try:
        for round_ in range(repeats + 2):
            for provider, step in steps.items():
                seconds = common.time_call(step, device, warmup=0, repeats=1, min_seconds=0)
                if round_ >= 2:                                   # two warm-up rounds
                    samples[provider].append(seconds)
        medians = {provider: statistics.median(v) for provider, v in samples.items()}
    except KeyboardInterrupt:  # the rounds every provider finished (none: re-raised)
        medians = common.interrupted_medians(samples)
    rows = []
    for provider in PROVIDERS:
        seconds = medians[provider]
        memory = common.unless_interrupted(
            lambda: common.peak_memory(steps[provider], device) if device.type == "cuda"
            else None if args.quick else peak_rss_in_child(provider, args))
        rows.append({"provider": provider, "time_ms": seconds * 1e3,
                     "images_per_s": args.batch / seconds, "peak_memory_mb":
                     None if memory is None else memory / 2**20,
                     "memory_kind": "cuda max_memory_allocated" if device.type == "cuda"
                     else "peak RSS of a fresh process (VmHWM)"})
    del steps
    common.add_speedups(rows, (), ("public",))
    print(f"one training step, Fashion-MNIST networks, B={args.batch}, J={args.samples}, "
          f"d={args.latent_dim}, {args.dtype}, {common.device_name(device)}")
    common.print_table(rows, [("provider", "provider", "s"), ("time_ms", "ms", ".1f"),
                              ("images_per_s", "images/s", ".1f"),
                              ("speedup_vs_public", "x public", ".2f"),
                              ("peak_memory_mb", "peak MB", ".0f")])
    cosine = common.unless_interrupted(
        lambda: gradient_agreement(args.latent_dim, args.samples, x, dtype))
    if cosine is not None:
        print(f"gradient cosine, decode='selected' vs 'all' (same noise): {cosine:.4f}")
    if not (args.quick or args.no_save):
        payload = {"benchmark": "dnn_step", "environment": common.environment(device),
                   "load_average": os.getloadavg(),
                   "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                   "shape": {"B": args.batch, "J": args.samples, "latent_dim": args.latent_dim,
                             "image": [1, 28, 28], "architecture": "fmnist (Table 5)"},
                   "dtype": args.dtype, "repeats": repeats, "clock": clock.__name__, "rows": rows,
                   "gradient_cosine_selected_vs_all": cosine}
        print(f"wrote {common.write_results('dnn_step', device, payload, directory=args.out)}")


if __name__ == "__main__":
    main()
