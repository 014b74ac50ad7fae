"""Linear-generator training (section 4.1, Algorithm 1, Appendix D) on the fused ops.

Variational methods: the inference network's heads go through the prior's sampler
(``vsc_kernels.threshold_sample`` for the Laplace/Gaussian families), the ``J``
samples through ``vsc_kernels.linear_elbo`` (max/avg/IWAE selection, eqs. 7, 9)
and the dictionary gets the Frobenius penalty of eq. (11). FISTA: codes from
``vsc_kernels.fista`` with a warmed-up ``lambda`` (objective 10), then the same
fused reconstruction loss for the dictionary.

A run directory holds ``config.json`` (resolved), ``metrics.jsonl`` (one line per
epoch), ``checkpoint.pt`` (written atomically at every epoch end and every
``checkpoint_minutes`` within an epoch, with all RNG states: a killed run resumes
exactly where its last checkpoint left it), ``dictionary.png`` (Figure 3),
``summary.json`` and, for variational methods, ``jaccard.png`` (Figure 5).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

import vsc_kernels

from . import conventions, metrics, plots, runs
from .graphed_step import Capture, GraphedStep, capture_cuda_graph
from .step_monitor import StepMonitor
from ._io import atomic_write
from .config import Config
from .data import load_patches
from .models import InferenceNetwork, LinearGenerator, patch_side
from .priors import make_prior

CHECKPOINT = runs.CHECKPOINT
DIVERGED = "diverged.json"     # written by train() when a run meets a non-finite loss
RESUME_MAY_CHANGE = ("device", "check_every")   # config keys that do not change the result


# --------------------------------------------------------------------------------------
# Files written atomically
# --------------------------------------------------------------------------------------



def write_json(path: Path, value) -> None:
    atomic_write(path, lambda h: h.write((json.dumps(value, indent=2) + "\n").encode()))


def write_jsonl(path: Path, records: list[dict]) -> None:
    atomic_write(path, lambda h: h.write("".join(json.dumps(r) + "\n" for r in records).encode()))


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# --------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------

class _GradientScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value, scale):
        ctx.scale = scale
        return value.view_as(value)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def _scale_gradient(value: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by ``scale``."""
    return value if scale == 1.0 else _GradientScale.apply(value, scale)


def elbo_loss(x: torch.Tensor, z: torch.Tensor, kl: torch.Tensor | None, A: torch.Tensor, *,
              beta: float, method: str, recon: str):
    """The ELBO term of eq. (11) over ``J`` samples ``z (B, J, d)``: ``(loss, result)``.

    The encoder gets the gradient of ``linear_elbo(..., method)``. The dictionary ``A``
    gets that of ``0.5 * mean_b sum_j w_bj ||x_b - A z_bj||^2`` (summed over pixels)
    whatever ``recon`` the encoder's loss uses: the paper's public code trains the
    encoder on the per-pixel mean squared error but steps the dictionary (lr 0.5) on the
    summed residual (``_scale_gradient`` rescales the gradient that reaches ``A``). The
    weights ``w`` are the selection's (one-hot for max, ``1/J`` for avg); under softmin
    the public code steps the dictionary with ``w = softmax(-L)`` detached, the gradient
    of the IWAE bound, so ``A`` then gets its gradient from a second ``"iwae"``
    evaluation on detached codes.
    """
    scale = 0.5 * (x.shape[1] if recon == "mean" else 1.0)
    A_scaled = _scale_gradient(A, scale)
    if method != "softmin":
        result = vsc_kernels.linear_elbo(x, z, A_scaled, kl, beta=beta, method=method,
                                         recon=recon)
        return result.loss, result
    result = vsc_kernels.linear_elbo(x, z, A.detach(), kl, beta=beta, method=method, recon=recon)
    for_A = vsc_kernels.linear_elbo(x, z.detach(), A_scaled,
                                    None if kl is None else kl.detach(), beta=beta,
                                    method="iwae", recon=recon).loss
    return result.loss + (for_A - for_A.detach()), result


class Trainer:
    """Builds the models from a :class:`Config`, trains, checkpoints, evaluates."""

    def __init__(self, config: Config, out_dir: str | Path, *, progress: bool = True,
                 checkpoint_minutes: float = 5.0, capture: Capture | None = None):
        self.config = config
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.checkpoint_seconds = checkpoint_minutes * 60
        self.device = torch.device(config.device)
        # How the step is recorded for replay: a CUDA graph with cuda_graphs = true, or
        # the given function (a test replays the step on the CPU through a stand-in).
        self.capture = capture or (capture_cuda_graph if config.cuda_graphs else None)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("config: device='cuda' but CUDA is not available")
        self.patches = load_patches(config.data, n_train=config.n_train, n_val=config.n_val,
                                    patch_size=config.patch_size, seed=config.seed,
                                    cache_dir=config.cache_dir)
        self.data_dim = self.patches.train.shape[1]
        patch_side(self.data_dim)
        self.train_x = self.patches.train.to(self.device)
        self.val_x = self.patches.val.to(self.device)

        torch.manual_seed(config.seed)
        np.random.seed(config.seed % 2**32)
        random.seed(config.seed)
        self.variational = config.method == "variational"
        self.prior = (make_prior(config.prior, config.latent_dim, **config.prior_options())
                      if self.variational else None)
        self.generator = LinearGenerator(self.data_dim, config.latent_dim).to(self.device)
        self.optimizers = {"dictionary": self._sgd(self.generator.parameters(),
                                                   lr=config.lr_dictionary)}
        self.steps_per_epoch = math.ceil(config.n_train / config.batch_size)
        self.schedulers = {"dictionary": torch.optim.lr_scheduler.ExponentialLR(
            self.optimizers["dictionary"], gamma=config.lr_decay)}
        self.encoder = None
        if self.variational:
            self.encoder = InferenceNetwork(self.data_dim, config.latent_dim,
                                            self.prior.heads).to(self.device)
            self.optimizers["encoder"] = self._sgd(
                self.encoder.parameters(), lr=config.lr_encoder, momentum=config.momentum,
                nesterov=True)
            self.schedulers["encoder"] = conventions.encoder_scheduler(
                self.optimizers["encoder"], config.convention, config.lr_encoder,
                config.epochs * self.steps_per_epoch)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.accumulator = {"loss": 0.0, "nonzero": 0.0, "batches": 0}
        self.history: list[dict] = []
        self.monitor = StepMonitor(self.device)
        self.last_batch = self.train_x[:config.batch_size]
        self.graphed_step = GraphedStep(self, self.capture) if self.capture else None

    def _sgd(self, params, lr: float, **options) -> torch.optim.SGD:
        """SGD, fused on the CPU and CUDA: one kernel per step, the same numbers as the
        per-parameter loop, and an update that the step monitor can skip on the device
        (``found_inf``) instead of undoing it from copies. For a captured step the learning
        rate is a device tensor that the schedulers fill in place (a Python float would be
        baked into the graph)."""
        if self.capture is not None:   # cuda_graphs: the config has checked the device
            lr = torch.tensor(lr, device=self.device)
        fused = True if self.device.type in ("cpu", "cuda") else None
        return torch.optim.SGD(params, lr=lr, fused=fused, **options)

    # -- one step ----------------------------------------------------------------------
    def fista_lambda(self, step: int) -> float:
        c = self.config
        warm = min(1.0, c.fista_warmup_start + c.fista_warmup_step * step)
        return warm * c.fista_lambda

    def infer_fista(self, x: torch.Tensor, lam: float) -> torch.Tensor:
        """MAP codes for objective (10) ``c ||x - Az||^2 + lam ||z||_1`` (``c`` = 0.5 in
        the public code, 1 in the paper's equation): FISTA solves
        ``0.5 ||x - Az||^2 + (0.5 lam / c) ||z||_1``, the same minimizer, from ``A^T x``
        as the public code's FISTA does (from 0 under "paper_equations")."""
        c = self.config
        A = self.generator.A.detach()
        init = x @ A if c.public_code else None
        return vsc_kernels.fista(x, A, lam * 0.5 / c.objective_weight, max_iter=c.fista_max_iter,
                                 tol=c.fista_tolerance, init=init).codes

    def objective(self, x: torch.Tensor, codes: torch.Tensor, lam: float | None = None) -> float:
        """Objective (10) averaged over the inputs (:meth:`objective_per_input`)."""
        return float(self.objective_per_input(x, codes, lam).mean())

    def objective_per_input(self, x: torch.Tensor, codes: torch.Tensor,
                            lam: float | None = None) -> torch.Tensor:
        """Objective (10) per input, ``c ||x - Az||^2 + lam ||z||_1`` with ``lam =
        val_lambda`` and the convention's ``c`` (0.5: the paper's Table 1 scale), as a
        float64 ``(N,)`` tensor on the device."""
        c = self.config
        lam = c.val_lambda if lam is None else lam
        return c.objective_weight * metrics.sparse_coding_objective(
            x, self.generator.A.detach(), codes, lam / c.objective_weight, reduction="none")

    def loss(self, x: torch.Tensor, step: int, num_samples: int | None = None):
        """Training objective (eq. 11; :func:`elbo_loss` plus the Frobenius term), the
        sampled codes ``(B, J, d)`` and the ``ElboResult`` (the selection over them)."""
        c = self.config
        if self.variational:
            sample = self.prior.sample(self.encoder(x), num_samples or c.num_samples, step)
            codes, kl, method = sample.z, sample.kl, c.elbo_method
        else:
            codes = self.infer_fista(x, self.fista_lambda(step))[:, None, :]
            kl, method = None, "max"
        elbo, result = elbo_loss(x, codes, kl, self.generator.A, beta=c.beta, method=method,
                                 recon=c.recon)
        loss = elbo + c.frobenius_weight * self.generator.frobenius_penalty()
        return loss, codes, result

    def train_step(self, x: torch.Tensor) -> None:
        """One step on the batch ``x``. It reads nothing back to the host (on a GPU the
        host queues the next step without waiting): the loss, the % of non-zero codes,
        objective (10) and the step's health go to :attr:`monitor` on the device, and the
        loop reads them every ``check_every`` steps (:meth:`read_monitor`). A non-finite
        loss or gradient freezes the model before that update (:mod:`vsc.step_monitor`);
        the next read stops the run naming the step. With ``cuda_graphs`` the device part
        is replayed from a CUDA graph (:mod:`vsc.graphed_step`)."""
        try:
            if self.graphed_step is not None:
                self.graphed_step(x)
            else:
                self.zero_grad()
                self.device_step(x)
        except (RuntimeError, ValueError):
            # After an update that overflowed (finite loss and gradients, non-finite
            # parameters: the fused optimizers cannot take it back) the next steps compute
            # with non-finite values, and an op's argument check may fail before the next
            # read (FISTA's step size, the threshold): the read names the first unhealthy
            # step instead of the error it caused.
            self.read_monitor()
            raise
        if "encoder" in self.schedulers:
            self.schedulers["encoder"].step()
        self.monitor.pending += 1
        self.last_batch = x
        self.step += 1

    def zero_grad(self) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)

    def device_step(self, x: torch.Tensor) -> None:
        """The part of :meth:`train_step` that runs on the device (what a CUDA graph
        records): loss, backward, the guarded optimizer steps and the monitor's sums."""
        loss, codes, result = self.loss(x, self.step)
        loss.backward()
        codes = codes.detach()
        # Objective (10) at the fixed lambda on the selected training codes, with the
        # updated dictionary (the public code's "train loss"): unlike the ELBO it does
        # not move with the warm-ups.
        self.monitor.update(
            loss, list(self.optimizers.values()),
            nonzero=torch.count_nonzero(codes).double() * 100.0 / codes.numel(),
            objective=lambda: self.objective_per_input(x, self.select_codes(codes, result)).mean())

    def read_monitor(self) -> None:
        """Fold the steps recorded since the last read into :attr:`accumulator` (one
        transfer from the device); stop with ``FloatingPointError`` naming the first
        non-finite step, whose update (and every later one) was not applied unless it was
        an overflowing one (:mod:`vsc.step_monitor`)."""
        reading = self.monitor.read()
        acc = self.accumulator
        acc.update(loss=reading.loss, nonzero=reading.nonzero, objective=reading.objective)
        acc["batches"] += reading.steps

        def message(what, step):
            self.step = step   # the model is the one before that step's update
            return self._nonfinite_message(what, self.last_batch)
        reading.raise_if_unhealthy(message)

    def _nonfinite_message(self, what: str, x: torch.Tensor) -> str:
        """Which step, the likely cause, and that the checkpoint is intact."""
        c = self.config
        shift = None
        if self.variational:
            with torch.no_grad():
                shift = self.encoder(x)[self.prior.heads[0]].abs().max().item()
        runaway = (self.variational and c.estimator != "subgradient"
                   and getattr(self.prior, "base", None) == "laplace"
                   and getattr(self.prior, "threshold", 0.0) > 0
                   and c.shift_gradient == "straight")
        if self.variational and c.estimator == "subgradient":
            cause = ("the subgradient estimator is known to diverge or collapse (Table 2, "
                     "Appendix C); use estimator=\"straight\"")
        elif runaway:
            cause = (f"a shift ran away (max |mu| on this batch: {shift:.3g}): the straight-"
                     "through gradient reaches the shift where a sample is zero and max-ELBO "
                     "sampling hides the overshoot (README); set shift_gradient=\"exact\" or "
                     "use smaller learning rates (lr_encoder, lr_dictionary)")
        else:
            cause = ("a learning rate too large for this schedule (lr_encoder, "
                     "lr_dictionary) or a diverging prior; rerun with a smaller one")
        return (f"{what} at step {self.step} (epoch {self.epoch + 1}); likely cause: {cause}. "
                f"Training stopped; the last checkpoint in {self.out_dir} is intact")

    def select_codes(self, codes: torch.Tensor, result) -> torch.Tensor:
        """One code per input from its ``J`` samples ``(B, J, d)``, as the public code
        picks it (``Categorical(weight).sample()``): the max-ELBO sample under ``max``
        (``result.index``), a uniformly drawn one under ``avg``, one drawn from
        ``softmax(-L)`` under ``iwae``/``softmin``."""
        B, J = codes.shape[:2]
        if J == 1:
            return codes[:, 0]
        method = self.config.elbo_method if self.variational else "max"
        if method == "max":
            index = result.index
        elif method == "avg":
            index = torch.randint(J, (B,), device=codes.device)
        else:
            probs = torch.softmax(-result.per_sample.float(), dim=1)
            index = torch.multinomial(probs, 1).squeeze(1)
        return codes[torch.arange(B, device=codes.device), index]

    @contextlib.contextmanager
    def evaluation_noise(self):
        """Evaluation draws its noise from a generator seeded by (seed, step) and leaves
        the training RNG untouched, so the last epoch's validation codes and the
        summary's are the same draws."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.config.seed * 1_000_003 + self.step)
            yield

    # -- checkpoints -------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "accumulator": dict(self.accumulator), "history": list(self.history),
            "generator": self.generator.state_dict(),
            "encoder": self.encoder.state_dict() if self.encoder is not None else None,
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "rng": _rng_state(self.device),
        }

    def save_checkpoint(self) -> Path:
        """``checkpoint.pt``, atomically, keeping the previous one (:mod:`vsc.runs`),
        after reading the monitor: a run whose model went non-finite stops instead."""
        self.read_monitor()
        return runs.save_checkpoint(self.state(), self.out_dir)

    def load_checkpoint(self) -> Path:
        """Restore the newest readable checkpoint of ``out_dir`` (falling back on the
        previous one when the newest is damaged); returns the file loaded."""
        state, path = runs.load_checkpoint(self.out_dir, map_location=self.device)
        # Everything but the device and the read interval must match (epochs too: the
        # encoder's one-cycle schedule is laid out over all of them); a field added since
        # the checkpoint was written counts at its default.
        changed = runs.config_changes(state["config"], self.config, RESUME_MAY_CHANGE)
        if changed:
            raise ValueError(f"--resume: the checkpoint in {self.out_dir} was written with a "
                             f"different config (fields {changed}); use a new --out")
        self.step, self.epoch = state["step"], state["epoch"]
        self.batch_in_epoch = state["batch_in_epoch"]
        self.accumulator, self.history = state["accumulator"], state["history"]
        acc = self.accumulator
        self.monitor = StepMonitor(self.device, self.step,
                                   (acc["loss"], acc["nonzero"], acc.get("objective", 0.0)))
        self.generator.load_state_dict(state["generator"])
        if self.encoder is not None:
            self.encoder.load_state_dict(state["encoder"])
        for key, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][key])
        for key, scheduler in self.schedulers.items():
            scheduler.load_state_dict(state["schedulers"][key])
        _set_rng_state(state["rng"], self.device)
        return path

    # -- the loop ----------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The data order of an epoch depends only on (seed, epoch), so resuming replays it."""
        generator = torch.Generator().manual_seed(self.config.seed * 100003 + epoch)
        return torch.randperm(self.config.n_train, generator=generator).to(self.device)

    def fit(self, *, resume: bool = False, stop_after_steps: int | None = None) -> dict:
        """Train to ``config.epochs`` and evaluate, holding ``out_dir``'s run lock.
        ``stop_after_steps`` (tests) stops as a kill would, right after the checkpoint
        that follows that many steps. SIGINT/SIGTERM save a checkpoint at the current
        step and raise :class:`vsc.runs.Interrupted`."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with runs.RunLock(self.out_dir):
            if resume:
                self.load_checkpoint()
            elif any((self.out_dir / name).exists() for name in (CHECKPOINT, runs.PREVIOUS)):
                raise FileExistsError(f"{self.out_dir} already holds a run; pass --resume to "
                                      "continue it or choose another --out")
            with runs.StopOnSignal() as stop:
                stopped = self._train_epochs(stop, stop_after_steps)
            return stopped if stopped is not None else self.finish()

    def _train_epochs(self, stop: runs.StopOnSignal, stop_after_steps: int | None):
        c = self.config
        write_json(self.out_dir / "config.json", c.to_dict())
        write_jsonl(self.out_dir / "metrics.jsonl", self.history)
        last_save = time.monotonic()
        while self.epoch < c.epochs:
            order = self.epoch_order(self.epoch)
            started = time.monotonic()
            bar = None
            if self.progress:
                from tqdm import tqdm
                bar = tqdm(total=self.steps_per_epoch, initial=self.batch_in_epoch,
                           desc=f"epoch {self.epoch + 1}/{c.epochs}", leave=False)
            while self.batch_in_epoch < self.steps_per_epoch:
                start = self.batch_in_epoch * c.batch_size
                x = self.train_x[order[start:start + c.batch_size]]
                self.train_step(x)
                self.batch_in_epoch += 1
                if self.monitor.pending >= c.check_every:
                    self.read_monitor()
                    if bar is not None:
                        acc = self.accumulator
                        bar.set_postfix(loss=f"{acc['loss'] / acc['batches']:.4g}",
                                        nonzero=f"{acc['nonzero'] / acc['batches']:.1f}%")
                if bar is not None:
                    bar.update(1)
                cut = stop_after_steps is not None and self.step >= stop_after_steps
                if cut or stop.requested or time.monotonic() - last_save > self.checkpoint_seconds:
                    saved = self.save_checkpoint()
                    last_save = time.monotonic()
                if cut or stop.requested:
                    if bar is not None:
                        bar.close()
                    if stop.requested:
                        raise stop.interrupted(self.step, saved)
                    return {"stopped_at_step": self.step}
            if bar is not None:
                bar.close()
            self.read_monitor()
            self.schedulers["dictionary"].step()
            record = self.epoch_record(time.monotonic() - started)
            self.history.append(record)
            self.epoch += 1
            self.batch_in_epoch = 0
            self.accumulator = {"loss": 0.0, "nonzero": 0.0, "batches": 0}
            self.monitor.new_epoch()
            saved = self.save_checkpoint()
            last_save = time.monotonic()
            write_jsonl(self.out_dir / "metrics.jsonl", self.history)
            if self.progress:
                print(json.dumps(record), flush=True)
            if stop.requested:  # arrived during the epoch's evaluation
                raise stop.interrupted(self.step, saved)
        return None

    @torch.no_grad()
    def infer_codes(self, x: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        """Codes each method infers, ``(N, d)``: FISTA's MAP codes at the full lambda;
        for a variational method one posterior sample per input (``"paper_equations"``)
        or, as the public code validates, the one :meth:`select_codes` picks from the
        run's ``J`` samples (``"public_code"``). ``num_samples > 1`` returns that many
        independent posterior samples ``(N, num_samples, d)`` (the Jaccard passes)."""
        c = self.config
        if not self.variational:
            return self.infer_fista(x, c.fista_lambda)
        select = num_samples == 1 and c.public_code and c.num_samples > 1
        draws = c.num_samples if select else num_samples
        chunks = []
        for part in torch.split(x, max(1, 2**22 // (draws * c.latent_dim))):
            sample = self.prior.sample(self.encoder(part), draws, self.step)
            if select:
                result = vsc_kernels.linear_elbo(part, sample.z, self.generator.A.detach(),
                                                 sample.kl, beta=c.beta,
                                                 method=c.elbo_method, recon=c.recon)
                chunks.append(self.select_codes(sample.z, result))
            else:
                chunks.append(sample.z[:, 0] if num_samples == 1 else sample.z)
        return torch.cat(chunks)

    def warmup(self) -> float | None:
        """The prior's warm-up at the current step (None for FISTA)."""
        if not self.variational:
            return None
        return self.prior.warmup(self.step)

    def epoch_record(self, seconds: float) -> dict:
        """One line of metrics.jsonl. ``train_loss`` is the ELBO objective the encoder
        minimizes; it includes the warm-ups (the scale warm-up makes it rise while the
        model improves), so ``train_objective`` reports objective (10) at the fixed
        lambda on the selected training codes, and ``val_loss`` the same objective on
        the whole validation set (the summary's ``val_loss`` at the last epoch)."""
        acc = self.accumulator
        batches = max(acc["batches"], 1)
        with torch.no_grad(), self.evaluation_noise():
            codes = self.infer_codes(self.val_x)
        record = {
            "epoch": self.epoch + 1, "step": self.step,
            "train_loss": acc["loss"] / batches,
            "train_objective": acc.get("objective", float("nan")) / batches,
            "train_pct_nonzero": acc["nonzero"] / batches,
            "val_loss": self.objective(self.val_x, codes),
            "val_pct_nonzero": metrics.percent_nonzero(codes),
            "lr_dictionary": float(self.optimizers["dictionary"].param_groups[0]["lr"]),
            "seconds": seconds,
        }
        if self.variational:
            record["warmup"] = self.warmup()
        return record

    # -- final evaluation (section 4.1, Appendix C) --------------------------------------
    def finish(self) -> dict:
        summary = self.evaluate()
        write_json(self.out_dir / "summary.json", summary)
        (self.out_dir / DIVERGED).unlink(missing_ok=True)   # a resumed run that got through
        return summary

    def run_label(self) -> str:
        """The method in words, for figure titles."""
        c = self.config
        if not self.variational:
            return f"FISTA, lambda = {c.fista_lambda:g}"
        prior = c.prior.replace("_", " ").title() + (" + Gamma" if c.learn_threshold else "")
        # the estimator the sampler runs (the convention may turn "straight" into
        # "straight_shift"), and the shift's exact gradient where it is used
        estimator = c.sampler_estimator + (", exact shift gradient"
                                           if c.shift_gradient == "exact" else "")
        return f"{prior}, {estimator}, {c.sampling} J = {c.num_samples}"

    def evaluate(self) -> dict:
        """summary.json. Its ``val_loss`` is the last epoch's (the same evaluation noise,
        seeded by the step); the costlier metrics use the first ``eval_rows`` inputs."""
        with torch.no_grad(), self.evaluation_noise():
            return self._evaluate()

    def _evaluate(self) -> dict:
        c = self.config
        A = self.generator.A.detach()
        val = self.val_x
        subset = val[:c.eval_rows]
        codes = self.infer_codes(val)
        # For FISTA at lambda = val_lambda these are the same codes: solve once.
        fista_codes = (codes if not self.variational and c.fista_lambda == c.val_lambda
                       else self.infer_fista(val, c.val_lambda))
        side = patch_side(self.data_dim)
        label = self.run_label()
        plots.plot_dictionary(A.cpu(), self.out_dir / "dictionary.png", patch_shape=(side, side),
                              title=f"{label}: {self.step} steps, atoms by norm")
        if self.history:
            scale = "0.5 ||x - Az||^2" if c.public_code else "||x - Az||^2"
            objective = f"{scale} + {c.val_lambda:g} ||z||_1 per patch"
            plots.plot_metric_curves(
                self.history, ["train_loss", "train_objective", "val_loss", "val_pct_nonzero"],
                self.out_dir / "curves.png", title=label, labels={
                    "train_loss": "training ELBO loss\n(with warm-ups)",
                    "train_objective": f"train objective (10)\n{objective}",
                    "val_loss": f"validation objective (10)\n{objective}",
                    "val_pct_nonzero": "validation codes\n% non-zero"})
        summary = {
            "name": c.name, "method": c.method, "convention": c.convention,
            "prior": c.prior if self.variational else "fista",
            "sampling": c.sampling, "num_samples": c.num_samples, "seed": c.seed,
            "learn_threshold": c.learn_threshold, "estimator": c.estimator,
            "epochs": self.epoch, "steps": self.step,
            "objective_weight": c.objective_weight,
            "val_loss": self.objective(val, codes),
            "val_loss_fista_codes": self.objective(val, fista_codes),
            "pct_nonzero": metrics.percent_nonzero(codes),
            "multi_information": metrics.multi_information(codes[:c.eval_rows]),
            "feature_collapse_pct": metrics.feature_collapse(codes[:c.eval_rows]),
            # localized and oriented atoms (Figure 3's look; vsc.metrics.atom_shapes)
            "gabor_like_atoms_pct": 100 * metrics.gabor_like_fraction(A, (side, side)),
            "duplicate_atoms_pct": 100 * metrics.duplicate_atom_fraction(A),
            "device": str(self.device),
        }
        if self.variational:
            with torch.no_grad():
                params = self.encoder(subset)
                summary["posterior_collapse_pct"] = metrics.posterior_collapse(
                    self.prior.kl_per_dim(params))
                summary["iwae_loss"] = self.iwae_loss(subset)
                passes = self.infer_codes(subset, num_samples=c.jaccard_passes)
            jaccard = metrics.pairwise_jaccard(passes, metrics.active_atoms(A))
            summary["jaccard_mean"] = float(jaccard.mean())
            plots.plot_jaccard_histogram({label: jaccard.cpu().numpy()},
                                         self.out_dir / "jaccard.png",
                                         title="Support consistency (eq. 13) over "
                                               f"{c.jaccard_passes} posterior samples")
            summary["warmup"] = self.warmup()
            with torch.enable_grad():
                summary.update(self.gradient_snr(subset[:c.batch_size]))
        return summary

    @torch.no_grad()
    def iwae_loss(self, x: torch.Tensor) -> float:
        """IWAE bound with ``K = iwae_k`` (Burda et al. 2016): ``log w = log p(x | z) +
        log p(z) - log q(z | x)`` with ``log p(x | z) = -||x - Az||^2 - (D/2) log pi``
        (eq. 12 as a Gaussian of variance 1/2), in nats per input."""
        c = self.config
        A = self.generator.A.detach()
        log_weights = []
        for part in torch.split(x, max(1, 2**20 // (c.iwae_k * self.data_dim))):
            sample = self.prior.log_density_sample(self.encoder(part), c.iwae_k, self.step)
            residual = part[:, None, :] - sample.z @ A.T
            log_lik = -residual.square().sum(-1) - 0.5 * self.data_dim * math.log(math.pi)
            log_weights.append(log_lik + sample.log_prior_ratio)
        return metrics.iwae_bound(torch.cat(log_weights))

    def gradient_snr(self, x: torch.Tensor) -> dict:
        """Gradient SNR (Rainforth et al. 2018) of the inference network and the
        dictionary on one validation batch, over ``snr_samples`` noise draws."""
        groups = {"encoder": list(self.encoder.parameters()),
                  "dictionary": list(self.generator.parameters())}
        # zero_std="exclude": a parameter whose gradient never varies (an atom no code
        # uses gets only 2 kappa a_i) has no SNR; clamping its std would swamp the mean.
        snr = metrics.gradient_snr(lambda: self.loss(x, self.step)[0], groups,
                                   self.config.snr_samples, zero_std="exclude")
        return {f"snr_{name}": value for name, value in snr.items()}


def train(config: Config, out_dir: str | Path, *, resume: bool = False, progress: bool = True,
          checkpoint_minutes: float = 5.0) -> dict:
    """Train one run into ``out_dir`` (see the module docstring) and return its summary.
    A run that meets a non-finite loss or gradient writes ``diverged.json`` (the step and
    the message; Table 2 reports such runs as NaN) and raises ``FloatingPointError``."""
    trainer = Trainer(config, out_dir, progress=progress, checkpoint_minutes=checkpoint_minutes)
    try:
        return trainer.fit(resume=resume)
    except FloatingPointError as error:
        write_json(trainer.out_dir / DIVERGED, {
            "name": config.name, "method": config.method, "prior": config.prior,
            "estimator": config.estimator, "sampling": config.sampling,
            "num_samples": config.num_samples, "seed": config.seed,
            "learn_threshold": config.learn_threshold, "convention": config.convention,
            "step": trainer.step, "epoch": trainer.epoch + 1, "message": str(error)})
        raise
