"""DNN-generator training (section 4.2, Appendix E) on the fused ops, on one process or
many (``torchrun``), with automatic mixed precision.

One step: the batch goes through :class:`vsc.dnn.objective.SparseAutoencoder` (encoder,
the prior's sampler, ``J`` decoded samples per input, ``vsc_kernels.elbo_select``),
Adam (lr 3e-4, betas (0.5, 0.999), weight decay 1e-5) steps, and the learning rate
follows the public code's cycle schedule (:func:`cycle_lr_factor`). Under ``torchrun``
each process takes ``batch_size / WORLD_SIZE`` images of every global batch
(``DistributedSampler`` with ``set_epoch``), batch-norm statistics are shared across
processes (:mod:`vsc.dnn.distributed`), DistributedDataParallel averages the gradients,
and rank 0 writes every file.

A run directory holds ``config.json``, ``metrics.jsonl`` (one line per epoch: training
loss, validation MSE per pixel, % non-zero, multi-information, FID with its label),
``checkpoint.pt`` (written atomically by rank 0 at every epoch end, every
``checkpoint_minutes`` and every ``checkpoint_every`` steps, with the model, the
optimizer, the schedule, the GradScaler, the position in the epoch and every rank's RNG
state: a killed run resumed with ``--resume`` ends in the state the uninterrupted run
reaches), and at the end ``reconstructions.png`` (Figure 19), ``dictionary.png`` (the
estimated linear dictionary of Figure 6), ``point_biserial.png`` (Figure 8),
``curves.png`` and ``summary.json``.
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
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from .. import metrics, plots, runs
from ..priors import make_prior
from ..train import DIVERGED, _rng_state, _set_rng_state, write_json, write_jsonl
from . import distributed
from .config import DnnConfig
from .models import architecture_for
from .objective import SparseAutoencoder

CHECKPOINT = runs.CHECKPOINT
EVAL_SEED = 20220717          # evaluation noise: the same every epoch, apart from training's
# Fields that may change on --resume (they do not change what is computed).
RESUMABLE_CHANGES = ("device", "num_workers", "checkpoint_minutes", "checkpoint_every",
                     "eval_batch_size", "name")


def cycle_lr_factor(step: int, total_steps: int, warmup_fraction: float = 0.05,
                    divider: float = 25.0, final_divider: float = 1e4) -> float:
    """Learning rate at ``step`` over the peak: the public code's ``CycleScheduler``
    (``model/scheduler.py``): ``int(total * warmup_fraction)`` steps linear from
    ``1 / divider`` to 1, then a cosine to ``1 / (divider * final_divider)``. Step ``t``
    uses the value the public scheduler sets after its ``t``-th call; at step 0 the public
    code trains at the peak (its scheduler has not been called yet), here at
    ``1 / divider``, where its warm-up starts."""
    start, end = 1.0 / divider, 1.0 / (divider * final_divider)
    warm = int(total_steps * warmup_fraction)
    if warm > 0 and step <= warm:
        return start + (1.0 - start) * step / warm
    decay = max(total_steps - warm, 1)
    k = min(step - warm, decay)
    return end + (1.0 - end) / 2 * (math.cos(math.pi * k / decay) + 1)


class FirstN(Dataset):
    """The first ``n`` items of an image dataset (the public code's ``Subset(arange(n))``),
    keeping its interface (``image_shape``, ``attribute_names``, ``set_epoch`` ...)."""

    def __init__(self, dataset, n: int | None):
        self.dataset = dataset
        self.n = len(dataset) if n is None else min(n, len(dataset))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return self.dataset[i % self.n]

    def __getattr__(self, name):
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def attributes(self):
        return self.dataset.attributes()[:self.n]


def load_split(config: DnnConfig, split: str):
    from ..datasets import load_image_dataset

    n = config.n_train if split == "train" else config.n_val
    return FirstN(load_image_dataset(config.data, split, seed=config.seed), n)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _cpu(value):
    """A state (nested dicts/lists of tensors) with every tensor moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu(v) for v in value)
    return value


class DnnTrainer:
    """Builds datasets, model, optimizer and schedule from a :class:`DnnConfig`; trains,
    checkpoints, evaluates (see the module docstring)."""

    def __init__(self, config: DnnConfig, out_dir: str | Path, *, progress: bool = True,
                 procs: distributed.Processes | None = None):
        c = self.config = config
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.procs = procs if procs is not None else distributed.setup(c.device)
        self.device = self.procs.device
        world = self.procs.world_size
        if c.batch_size % world:
            raise ValueError(f"config: batch_size {c.batch_size} (global) is not divisible by "
                             f"the {world} processes")
        self.local_batch = c.batch_size // world
        self.train_set = load_split(c, "train")
        self.val_set = load_split(c, "val")
        self.steps_per_epoch = len(self.train_set) // c.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"config: batch_size {c.batch_size} exceeds the {len(self.train_set)} "
                             "training images")
        self.image_shape = tuple(self.train_set.image_shape)
        self.architecture = architecture_for(self.image_shape, c.architecture)

        _seed_everything(c.seed)    # the same initial model on every process
        self.prior = make_prior(c.prior, c.latent_dim, **c.prior_options())
        model = SparseAutoencoder(self.architecture, c.latent_dim, self.prior,
                                  num_samples=c.num_samples, beta=c.beta, sampling=c.sampling,
                                  decode=c.decode)
        model.encoder = distributed.share_batch_norm(model.encoder, self.procs)
        model.decoder = distributed.share_batch_norm(
            model.decoder, self.procs, replay=c.decode == "selected")
        self.model = model.to(self.device)
        self.network = self.model
        if self.procs.distributed:
            self.network = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False)   # batch-norm buffers are equal: shared statistics
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=c.lr,
                                          betas=(c.adam_beta1, c.adam_beta2),
                                          weight_decay=c.weight_decay)
        self.total_steps = c.epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=c.amp == "fp16")
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(c.amp)
        # Each process draws its own noise for its own rows.
        _seed_everything(c.seed + 1_000_003 * (self.procs.rank + 1))
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.accumulator = self._empty_accumulator()
        self.history: list[dict] = []
        self.fid_extractor = None

    def _lr_factor(self, step: int) -> float:
        if self.config.lr_schedule == "constant":
            return 1.0
        return cycle_lr_factor(step, self.total_steps, self.config.lr_warmup_fraction)

    @staticmethod
    def _empty_accumulator() -> dict:
        return {"loss": 0.0, "mse": 0.0, "nonzero": 0.0, "batches": 0}

    # -- one step ----------------------------------------------------------------------
    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    def train_step(self, x: torch.Tensor, flags: tuple[float, ...] = ()) -> dict:
        """One optimizer step on this process's part ``x`` of a global batch; returns the
        global batch's mean loss, reconstruction MSE per pixel and % non-zero, and
        ``flags`` summed over the processes (one all-reduce carries everything)."""
        self.network.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            out = self.network(x, self.step)
        local = [out.loss.item(), out.recon_error.mean().item(),
                 metrics.percent_nonzero(out.codes), *flags]
        total = distributed.all_reduce_sum(local, self.procs)
        loss, mse, nonzero = (v / self.procs.world_size for v in total[:3])
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at step {self.step}; the last checkpoint "
                                     f"in {self.out_dir} is intact")
        self.scaler.scale(out.loss).backward()
        if not self.scaler.is_enabled():  # fp16's scaler skips non-finite steps itself
            self._check_gradients()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return {"loss": loss, "mse": mse, "nonzero": nonzero, "flags": total[3:]}

    def _check_gradients(self) -> None:
        """Stop before an update with a non-finite gradient (the parameters and the last
        checkpoint stay good). The gradients are all-reduced, so every process agrees."""
        grads = [p.grad for p in self.network.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        if not torch.isfinite(norm):
            raise FloatingPointError(f"gradient norm is {norm.item()} at step {self.step} (the "
                                     f"loss was finite); the last checkpoint in {self.out_dir} "
                                     "is intact")

    # -- data --------------------------------------------------------------------------
    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This process's index lists for the steps of ``epoch``: ``DistributedSampler``
        (seeded by ``seed``, ``set_epoch(epoch)``) split into local batches; the last
        incomplete global batch is dropped. Step ``k``'s local batches over all processes
        are the ``k``-th ``batch_size`` indices of one permutation, whatever the number of
        processes."""
        sampler = DistributedSampler(self.train_set, num_replicas=self.procs.world_size,
                                     rank=self.procs.rank, shuffle=True, seed=self.config.seed)
        sampler.set_epoch(epoch)
        indices = list(sampler)
        b = self.local_batch
        return [indices[k * b:(k + 1) * b] for k in range(self.steps_per_epoch)]

    def loader(self, epoch: int, start: int) -> DataLoader:
        self.train_set.set_epoch(epoch)   # the random flips: a function of (seed, epoch, index)
        # Its own generator: creating an iterator must not draw from the global RNG
        # (a resumed run creates one more than an uninterrupted run).
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        return DataLoader(self.train_set, batch_sampler=self.epoch_batches(epoch)[start:],
                          num_workers=self.config.num_workers, generator=generator,
                          pin_memory=self.device.type == "cuda")

    # -- checkpoints -------------------------------------------------------------------
    def state(self, rng_states: list) -> dict:
        return {
            "config": self.config.to_dict(), "world_size": self.procs.world_size,
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "accumulator": dict(self.accumulator), "history": list(self.history),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": rng_states,
        }

    def save_checkpoint(self) -> None:
        """Collective: every rank sends its RNG state; rank 0 writes the file atomically,
        keeping the one it replaces (:func:`vsc.runs.save_checkpoint`)."""
        rng_states = distributed.gather_objects(_rng_state(self.device), self.procs)
        if self.procs.is_main:
            runs.save_checkpoint(_cpu(self.state(rng_states)), self.out_dir)

    def load_state(self, state: dict) -> None:
        changed = runs.config_changes(state["config"], self.config, RESUMABLE_CHANGES)
        if changed:
            raise ValueError(f"--resume: the checkpoint in {self.out_dir} was written with a "
                             f"different config (fields {changed}); use a new --out")
        if state["world_size"] != self.procs.world_size:
            raise ValueError(f"--resume: the checkpoint in {self.out_dir} was written by "
                             f"{state['world_size']} process(es), this run has "
                             f"{self.procs.world_size}; resume with the same number")
        self.step, self.epoch = state["step"], state["epoch"]
        self.batch_in_epoch = state["batch_in_epoch"]
        self.accumulator, self.history = state["accumulator"], state["history"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"][self.procs.rank], self.device)

    def _load_checkpoint_everywhere(self, resume: bool) -> None:
        """Rank 0 reads the checkpoint (falling back on the previous one if it is damaged)
        and sends it: the other ranks need no shared filesystem."""
        def read():
            if resume:
                return runs.load_checkpoint(self.out_dir, map_location="cpu")[0]
            if (self.out_dir / CHECKPOINT).exists() or (self.out_dir / runs.PREVIOUS).exists():
                raise FileExistsError(f"{self.out_dir} already holds a run; pass --resume to "
                                      "continue it or choose another --out")
            return None

        state = distributed.run_on_main(read, self.procs)
        if state is not None:
            self.load_state(state)

    # -- the loop ----------------------------------------------------------------------
    def fit(self, *, resume: bool = False, stop_after_steps: int | None = None) -> dict:
        """Train to ``config.epochs`` and evaluate. Rank 0 holds the run directory's lock
        (:class:`vsc.runs.RunLock`). ``stop_after_steps``: stop (every process) right after
        the checkpoint that follows that many steps, as a job with a time limit would;
        ``--resume`` continues. SIGINT/SIGTERM on any process stop every process after the
        current step with a checkpoint (:class:`vsc.runs.Interrupted`)."""
        lock = runs.RunLock(self.out_dir)

        def take_lock():
            self.out_dir.mkdir(parents=True, exist_ok=True)
            lock.__enter__()

        distributed.run_on_main(take_lock, self.procs)
        try:
            with runs.StopOnSignal() as stop:
                return self._fit(resume, stop_after_steps, stop)
        finally:
            if self.procs.is_main:
                lock.__exit__(None, None, None)

    def _fit(self, resume: bool, stop_after_steps: int | None, stop: runs.StopOnSignal) -> dict:
        c = self.config
        main = self.procs.is_main
        self._load_checkpoint_everywhere(resume)
        if main:
            write_json(self.out_dir / "config.json", c.to_dict())
            write_jsonl(self.out_dir / "metrics.jsonl", self.history)
        last_save = time.monotonic()
        while self.epoch < c.epochs:
            started = time.monotonic()
            bar = None
            if self.progress and main:
                from tqdm import tqdm
                bar = tqdm(total=self.steps_per_epoch, initial=self.batch_in_epoch,
                           desc=f"epoch {self.epoch + 1}/{c.epochs}", leave=False)
            for x, _ in self.loader(self.epoch, self.batch_in_epoch):
                due = main and time.monotonic() - last_save > 60 * c.checkpoint_minutes
                result = self.train_step(x.to(self.device, non_blocking=True),
                                         (float(due), float(stop.requested)))
                due, signalled = (v > 0 for v in result["flags"])
                self.batch_in_epoch += 1
                acc = self.accumulator
                for key in ("loss", "mse", "nonzero"):
                    acc[key] += result[key]
                acc["batches"] += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{acc['loss'] / acc['batches']:.4g}",
                                    nonzero=f"{acc['nonzero'] / acc['batches']:.1f}%")
                limit = stop_after_steps is not None and self.step >= stop_after_steps
                every = c.checkpoint_every and self.step % c.checkpoint_every == 0
                if self.batch_in_epoch == self.steps_per_epoch:
                    continue      # the epoch's end checkpoints (after its evaluation)
                if due or every or limit or signalled:
                    self.save_checkpoint()
                    last_save = time.monotonic()
                if signalled or limit:
                    if bar is not None:
                        bar.close()
                    return self._stopped(stop if signalled else None)
            if bar is not None:
                bar.close()
            seconds = time.monotonic() - started
            record = distributed.run_on_main(lambda: self.epoch_record(seconds), self.procs)
            self.history.append(record)
            self.epoch += 1
            self.batch_in_epoch = 0
            self.accumulator = self._empty_accumulator()
            self.save_checkpoint()
            last_save = time.monotonic()
            if main:
                write_jsonl(self.out_dir / "metrics.jsonl", self.history)
                if self.progress:
                    print(json.dumps(record), flush=True)
            signalled = distributed.all_reduce_sum([float(stop.requested)], self.procs)[0] > 0
            limit = stop_after_steps is not None and self.step >= stop_after_steps
            if (signalled or limit) and self.epoch < c.epochs:
                return self._stopped(stop if signalled else None)
        return distributed.run_on_main(self.finish, self.procs)

    def _stopped(self, stop: runs.StopOnSignal | None) -> dict:
        """After the stop's checkpoint: raise :class:`vsc.runs.Interrupted` for a signal
        (on every process), else report the step reached."""
        if stop is not None:
            raise stop.interrupted(self.step, self.out_dir / CHECKPOINT)
        return {"stopped_at_step": self.step, "checkpoint": str(self.out_dir / CHECKPOINT)}

    # -- evaluation (rank 0) -----------------------------------------------------------
    @contextlib.contextmanager
    def _eval_rng(self):
        """Evaluation draws its noise from a fixed seed, outside training's RNG streams."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(EVAL_SEED)
            yield

    @torch.no_grad()
    def validation_pass(self, rows: int | None = None) -> dict[str, torch.Tensor]:
        """The first ``rows`` validation images through the model in eval mode: images,
        attributes, codes (the selected sample of ``J``), reconstructions and errors."""
        n = len(self.val_set) if rows is None else min(rows, len(self.val_set))
        loader = DataLoader(FirstN(self.val_set, n), batch_size=self.config.eval_batch_size,
                            num_workers=self.config.num_workers)
        self.model.eval()
        parts: dict[str, list] = {"x": [], "attributes": [], "codes": [], "x_hat": [],
                                  "mse": [], "mse_mean": []}
        with self._eval_rng():
            for x, attributes in loader:
                with self.autocast():
                    out = self.model.reconstruct(x.to(self.device), self.step)
                parts["x"].append(x)
                parts["attributes"].append(attributes)
                for key in ("codes", "x_hat", "mse", "mse_mean"):
                    parts[key].append(out[key].float().cpu())
        self.model.train()
        return {k: torch.cat(v) for k, v in parts.items()}

    def fid(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[float | None, str | None]:
        if not self.config.fid:
            return None, None
        from .. import fid

        if self.fid_extractor is None:
            with self._eval_rng():
                self.fid_extractor = fid.make_feature_extractor(   # the whole training split
                    self.train_set.dataset, fid_weights=self.config.fid_weights,
                    cache_dir=self.config.cache_dir, device=str(self.device))
        return float(fid.fid(self.fid_extractor, real, fake)), self.fid_extractor.label

    def validation_metrics(self, val: dict[str, torch.Tensor]) -> dict:
        fid_value, fid_label = self.fid(val["x"], val["x_hat"])
        return {
            "val_mse": float(val["mse"].double().mean()),
            "val_mse_mean_over_samples": float(val["mse_mean"].double().mean()),
            "val_pct_nonzero": metrics.percent_nonzero(val["codes"]),
            "multi_information": metrics.multi_information(val["codes"]),
            "fid": fid_value, "fid_label": fid_label,
        }

    def epoch_record(self, seconds: float) -> dict:
        acc = self.accumulator
        batches = max(acc["batches"], 1)
        record = {"epoch": self.epoch + 1, "step": self.step,
                  "train_loss": acc["loss"] / batches, "train_mse": acc["mse"] / batches,
                  "train_pct_nonzero": acc["nonzero"] / batches,
                  "lr": self.optimizer.param_groups[0]["lr"], "seconds": seconds}
        record.update(self.validation_metrics(self.validation_pass(self.config.eval_rows)))
        return record

    def method_label(self) -> str:
        c = self.config
        return c.prior + ("_gamma" if c.learn_threshold else "")

    def finish(self) -> dict:
        """Final evaluation on the whole validation set, figures, ``summary.json``."""
        from ..metrics import estimated_dictionary, point_biserial

        c = self.config
        val = self.validation_pass()
        summary = {
            "name": c.name, "prior": self.method_label(), "base_prior": c.prior,
            "learn_threshold": c.learn_threshold, "latent_dim": c.latent_dim,
            "pct_nonzero_target": (None if c.prior in ("gaussian", "laplacian")
                                   else c.pct_nonzero),
            "threshold": c.lam0, "num_samples": c.num_samples, "sampling": c.sampling,
            "decode": c.decode, "beta": c.beta, "amp": c.amp, "seed": c.seed,
            "dataset": self.train_set.name, "architecture": self.architecture,
            "epochs": self.epoch, "steps": self.step, "world_size": self.procs.world_size,
            "device": str(self.device), "n_val": len(val["x"]),
        }
        summary.update(self.validation_metrics(val))
        title = f"{self.method_label()}, d={c.latent_dim}"
        n_show = min(8, len(val["x"]))
        plots.plot_reconstructions(val["x"][:n_show], val["x_hat"][:n_show],
                                   self.out_dir / "reconstructions.png",
                                   title=f"Reconstructions: {title}")
        images = val["x"].flatten(1)
        dictionary = estimated_dictionary(images, val["codes"])
        plots.plot_estimated_dictionary(dictionary, self.out_dir / "dictionary.png",
                                        self.image_shape, title=f"Estimated dictionary: {title}")
        correlation = point_biserial(val["codes"], val["attributes"])
        summary["strongest_latents"] = plots.plot_point_biserial(
            correlation, list(self.val_set.attribute_names), self.out_dir / "point_biserial.png",
            title=f"Point-biserial correlation: {title}", A_est=dictionary,
            image_shape=self.image_shape)
        strongest = torch.nan_to_num(torch.as_tensor(correlation).abs(), nan=0.0).amax(dim=0)
        summary["max_abs_point_biserial"] = {
            name: float(v) for name, v in zip(self.val_set.attribute_names, strongest)}
        if self.history:
            plots.plot_metric_curves(self.history, ["train_loss", "val_mse", "val_pct_nonzero"],
                                     self.out_dir / "curves.png")
        write_json(self.out_dir / "summary.json", summary)
        return summary

    def close(self) -> None:
        """Free the model, then leave the process group (barrier first)."""
        self.network = self.model = self.optimizer = self.scheduler = None
        distributed.teardown(self.procs)


def train(config: DnnConfig, out_dir: str | Path, *, resume: bool = False,
          progress: bool = True, stop_after_steps: int | None = None) -> dict:
    """Train one run into ``out_dir`` (see the module docstring) and return its summary;
    under ``torchrun`` every process calls this."""
    procs = distributed.setup(config.device)
    trainer = None
    try:
        trainer = DnnTrainer(config, out_dir, progress=progress, procs=procs)
        return trainer.fit(resume=resume, stop_after_steps=stop_after_steps)
    except FloatingPointError as error:  # as the linear trainer: diverged.json, then raise
        if trainer is not None and procs.is_main:
            write_json(trainer.out_dir / DIVERGED, {
                "name": config.name, "prior": config.prior, "sampling": config.sampling,
                "num_samples": config.num_samples, "seed": config.seed,
                "latent_dim": config.latent_dim, "step": trainer.step, "message": str(error)})
        raise
    finally:
        if trainer is not None:
            trainer.close()
        else:
            distributed.teardown(procs)
