"""Configuration of a DNN-generator run (section 4.2, Appendix E): one flat dataclass,
loaded from TOML by :func:`vsc.config.load_config` when the file says
``generator = "dnn"``, every field overridable as ``key=value``.

Defaults are Appendix E's Fashion-MNIST values; the shipped configs
(``vsc/configs/dnn/quick.toml``, ``fmnist/<prior>.toml``, ``celeba/<prior>.toml``) set
the rest. Where the paper is silent the public code decides (comments below say which).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from statistics import NormalDist

from ..overrides import ConfigError, check_instance, choice
from ..priors import PRIORS
from .objective import DECODES

SAMPLING = ("max", "avg", "iwae", "softmin")
ESTIMATORS = ("straight", "subgradient", "straight_shift")
AMP = ("off", "bf16", "fp16")
LR_SCHEDULES = ("cycle", "constant")
BASES = {"gaussian": "gaussian", "thresholded_gaussian": "gaussian", "laplacian": "laplace",
         "thresholded_laplacian": "laplace"}


def threshold_for_percent(pct_nonzero: float, base: str, prior_scale: float) -> float:
    """The threshold ``lam0`` at which a sample of the prior's base distribution is
    non-zero after thresholding with probability ``pct_nonzero / 100`` (its tail mass):

    * Laplace(0, b0), ``b0 = prior_scale``: ``P(|s| > lam) = exp(-lam / b0)``, so
      ``lam0 = b0 ln(100 / pct)`` (b0 = 0.1, 10%: 0.230, the public code's 0.23);
    * Gaussian N(0, sigma0^2), ``sigma0^2 = prior_scale``:
      ``P(|s| > lam) = erfc(lam / (sigma0 sqrt 2))``, so ``lam0 = sigma0 Phi^-1(1 - p/2)``
      (0.1, 10%: 0.520, Appendix D's 0.52; 20%: 0.405, the public CelebA config's).
    """
    if not 0 < pct_nonzero <= 100:
        raise ValueError(f"pct_nonzero must be in (0, 100], got {pct_nonzero}")
    if prior_scale <= 0:
        raise ValueError(f"prior_scale must be > 0, got {prior_scale}")
    p = pct_nonzero / 100.0
    if base == "laplace":
        return prior_scale * math.log(1.0 / p)
    if base == "gaussian":
        return 0.0 if p == 1.0 else math.sqrt(prior_scale) * NormalDist().inv_cdf(1.0 - p / 2)
    raise ValueError(f"base must be 'laplace' or 'gaussian', got {base!r}")


@dataclass
class DnnConfig:
    generator: str = choice("dnn", ("dnn",), "selects this dataclass in vsc.config.load_config")
    # data (vsc.datasets.load_image_dataset)
    data: str = "digits"                 # "digits" (embedded), a Fashion-MNIST or CelebA folder
    n_train: int | None = None           # first n training images; None: all
    n_val: int | None = None             # first n validation images; None: all
    architecture: str = choice("auto", ("auto", "fmnist", "celeba"),
                               "auto: from the image shape; fmnist: Table 5; celeba: Table 4")
    num_workers: int = 0                 # DataLoader worker processes per rank
    # model and prior
    latent_dim: int = 256              # d (Figure 7 sweeps it)
    prior: str = choice("thresholded_gaussian", tuple(PRIORS), "the prior (vsc/priors/)")
    pct_nonzero: float = 10.0            # % non-zero the prior encourages (Figure 7's sweep)
    threshold: float | None = None       # lam0; None: from pct_nonzero (threshold_for_percent)
    learn_threshold: bool = False        # Gamma(alpha0, alpha0 / lam0) prior on lam
    gamma_alpha0: float = 3.0            # Gamma prior's shape alpha0 (rate alpha0 / lam0)
    gamma_kl_weight: float = 0.1         # beta2 / beta1 (Appendix E)
    prior_scale: float = 0.1             # b0 (Laplace) or sigma0^2 (Gaussian, slab); public 0.1
    spike_prior: float | None = None     # spike-and-slab prior P(non-zero); None: pct / 100
    estimator: str = choice("straight", ESTIMATORS,
                            "eq. (4); straight_shift is the public code's variant")
    # schedules (the public DNN scripts warm nothing up: w = 1 from the start)
    warmup_start: float = 1.0            # w at step 0: scale warm-up (Appendix B); spike_slab: KL's
    warmup_step: float = 2e-4            # added to w per step (after warmup_delay), w capped at 1
    warmup_delay: int = 500              # spike_slab: steps before its warm-up starts
    tau_decay: float = 0.9995            # spike-and-slab temperature per iteration (public)
    tau_min: float = 0.005               # public DNN configs' temp_min
    # objective
    num_samples: int = 20                # J (Appendix E: 20 Fashion-MNIST, 10 CelebA)
    sampling: str = choice("max", SAMPLING, "max: eq. (9); avg: eq. (7); iwae: the "
                           "importance-weighted bound; softmin: the public code's 'iwae'")
    beta: float = 1e-2                   # KL weight (Appendix E: 1e-2 FMNIST, 1e-3 CelebA)
    decode: str = choice("all", DECODES, "all: the exact gradient; selected (max only): "
                         "faster, another gradient (vsc.dnn.objective)")
    # optimization (Appendix E; the schedule is the public code's CycleScheduler)
    epochs: int = 300
    batch_size: int = 512                # global: split evenly over the processes
    lr: float = 3e-4
    adam_beta1: float = 0.5
    adam_beta2: float = 0.999
    weight_decay: float = 1e-5
    lr_schedule: str = choice("cycle", LR_SCHEDULES,
                              "cycle: linear warm-up from lr/25, cosine to lr/25e4")
    lr_warmup_fraction: float = 0.05
    amp: str = choice("off", AMP, "autocast dtype; fp16 with a GradScaler")
    seed: int = 0
    device: str = choice("auto", ("auto", "cpu", "cuda"), "auto: cuda if available")
    # evaluation and bookkeeping
    eval_rows: int | None = None         # validation images for the per-epoch metrics; None: all
    eval_batch_size: int = 256
    fid: bool = True                     # FID of reconstructions every epoch
    fid_weights: str | None = None       # Inception weights file (standard FID); None: offline
    cache_dir: str | None = None         # FID feature extractor cache
    checkpoint_minutes: float = 10.0     # also checkpoint within an epoch this often
    checkpoint_every: int = 0            # and every this many steps (0: never)
    name: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Types and choices (from the annotations), then ranges and combinations."""
        check_instance(self)

        def bad(message):
            raise ConfigError([f"config: {message}"])

        if not self.data:
            bad("data is empty: pass data=PATH (the Fashion-MNIST or CelebA folder) or "
                "data=digits (the embedded digits)")
        if self.decode == "selected" and self.sampling != "max":
            bad(f"decode='selected' needs sampling='max', got sampling={self.sampling!r}")
        for name in ("latent_dim", "num_samples", "epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                bad(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("n_train", "n_val", "eval_rows"):
            if getattr(self, name) is not None and getattr(self, name) < 2:
                bad(f"{name} must be >= 2 or none, got {getattr(self, name)}")
        for name in ("num_workers", "warmup_delay", "checkpoint_every", "beta", "lr",
                     "weight_decay", "gamma_kl_weight", "warmup_start", "warmup_step",
                     "checkpoint_minutes", "lr_warmup_fraction"):
            if getattr(self, name) < 0:
                bad(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("prior_scale", "gamma_alpha0", "tau_min"):
            if getattr(self, name) <= 0:
                bad(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.pct_nonzero <= 100:
            bad(f"pct_nonzero must be in (0, 100], got {self.pct_nonzero}")
        if self.threshold is not None and self.threshold < 0:
            bad(f"threshold must be >= 0, got {self.threshold}")
        if self.spike_prior is not None and not 0 < self.spike_prior < 1:
            bad(f"spike_prior must be in (0, 1), got {self.spike_prior}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                bad(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 < self.tau_decay <= 1:
            bad(f"tau_decay must be in (0, 1], got {self.tau_decay}")
        if self.lr_warmup_fraction >= 1:
            bad(f"lr_warmup_fraction must be < 1, got {self.lr_warmup_fraction}")
        if self.prior == "spike_slab" and (self.threshold is not None or self.learn_threshold):
            bad("prior 'spike_slab' has no threshold (its sparsity is spike_prior)")
        if self.prior in ("gaussian", "laplacian") and (self.threshold or self.learn_threshold):
            bad(f"prior {self.prior!r} has no threshold; use 'thresholded_{self.prior}'")

    # -- derived ---------------------------------------------------------------------
    @property
    def lam0(self) -> float | None:
        """The threshold: ``threshold`` or the prior's tail mass at ``pct_nonzero``."""
        if self.prior not in ("thresholded_gaussian", "thresholded_laplacian"):
            return None
        if self.threshold is not None:
            return float(self.threshold)
        return threshold_for_percent(self.pct_nonzero, BASES[self.prior], self.prior_scale)

    def prior_options(self) -> dict:
        options = {"prior_scale": self.prior_scale, "warmup_start": self.warmup_start,
                   "warmup_step": self.warmup_step}
        if self.prior == "spike_slab":
            options.update(spike_prior=(self.spike_prior if self.spike_prior is not None
                                        else self.pct_nonzero / 100.0),
                           warmup_delay=self.warmup_delay, tau_decay=self.tau_decay,
                           tau_min=self.tau_min)
            return options
        options.update(estimator=self.estimator, learn_threshold=self.learn_threshold,
                       gamma_alpha0=self.gamma_alpha0, gamma_kl_weight=self.gamma_kl_weight)
        if self.lam0 is not None:
            options["threshold"] = self.lam0
        return options

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

