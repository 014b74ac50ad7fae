"""Run configuration: one flat dataclass, loaded from TOML (or YAML when PyYAML is
installed), every field overridable as ``key=value`` on the command line.

Defaults are the paper's Appendix D schedule for the linear generator; the
shipped configs in ``vsc/configs/`` set the method-specific fields of each Table 1
row, and ``quick = true`` shrinks data and epochs for a run of a few minutes.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .conventions import CONVENTIONS
from .overrides import ConfigError, check_instance, check_values, choice, split_overrides
from .priors import PRIORS

METHODS = ("fista", "variational")
SAMPLING = ("max", "avg", "iwae", "softmin")
ESTIMATORS = ("straight", "subgradient", "straight_shift")


@dataclass
class Config:
    # what is trained
    method: str = choice("variational", METHODS, "FISTA's MAP codes or an inference network")
    convention: str = choice("public_code", CONVENTIONS, "whose conventions the run follows: "
                             "the paper's public code or its equations (vsc/conventions.py)")
    prior: str = choice("thresholded_laplacian", PRIORS, "the latent prior (section 4.1)")
    estimator: str = choice("straight", ESTIMATORS, "gradient through the threshold: eq. (4), "
                            "the a.e. subgradient, or eq. (4) with the shift's gradient")
    shift_gradient: str = choice("straight", ("straight", "exact"), "'exact': no straight-"
                                 "through gradient to the shift where a sample is zero "
                                 "(vsc/priors/thresholded.py)")
    sampling: str = choice("max", SAMPLING, "selection over J: max ELBO (eq. 9), mean (eq. 7), "
                           "IWAE bound, or the public code's softmin-weighted sum")
    num_samples: int = 20                # J
    threshold: float | None = None       # lam0; None: the prior's Appendix D value
    learn_threshold: bool = False        # Gamma posterior on lam
    gamma_alpha0: float = 3.0
    gamma_kl_weight: float = 0.1         # beta2 / beta1
    prior_scale: float = 0.1             # b0 (Laplace) or sigma0^2 (Gaussian, spike-and-slab slab)
    spike_prior: float = 0.1             # spike-and-slab: prior probability of a non-zero
    beta: float = 1e-2                   # KL weight beta1
    warmup_start: float | None = None    # scale warm-up w (Appendix B; spike-and-slab: KL or slab warm-up);
    warmup_step: float = 2e-4            #   None: 0.1 (0.0 for the paper's spike-and-slab), + warmup_step
    warmup_delay: int = 1500             #   per iteration after warmup_delay iterations (spike-and-slab;
                                         #   public_code: the Laplace base too)
    tau_decay: float = 0.9995            # spike-and-slab: Gumbel-softmax temperature, per iteration
    kappa: float | None = None           # Frobenius weight; None: 1e-3 (FISTA) / 1e-4
    recon: str = choice("mean", ("sum", "mean"), "squared error summed or averaged over pixels")
    # FISTA baseline (objective 10)
    fista_lambda: float = 20.0
    fista_warmup_start: float = 0.1
    fista_warmup_step: float = 1e-4      # per iteration
    fista_max_iter: int = 500
    fista_tol: float | None = None       # None: 1e-3 (public_code) or 1e-4 (paper_equations)
    # data
    data: str = "embedded"               # "embedded", a path to IMAGES.mat, or an image folder
    n_train: int = 80000
    n_val: int = 16000
    patch_size: int = 16
    latent_dim: int = 256
    cache_dir: str | None = None
    # optimization (Appendix D)
    epochs: int = 300
    batch_size: int = 100
    lr_dictionary: float = 0.5
    lr_decay: float = 0.99               # per epoch, dictionary
    lr_encoder: float = 1e-2             # SGD + Nesterov with a one-cycle schedule
    momentum: float = 0.9
    seed: int = 0
    device: str = "cpu"
    check_every: int = 100               # steps between reads of the loss and the health
    cuda_graphs: bool = False            # replay the step from a CUDA graph (vsc/graphed_step.py)
    # evaluation
    eval_rows: int = 2000                # validation rows for the costly metrics
    iwae_k: int = 200
    snr_samples: int = 100
    jaccard_passes: int = 20
    val_lambda: float = 20.0             # lam of objective (10) for the validation loss
    # bookkeeping
    name: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    def validate(self):
        check_instance(self)  # types and choices, from the annotations (vsc.overrides)

        def bad(message):
            raise ConfigError([f"config: {message}"])
        for name in ("fista_lambda", "val_lambda", "beta", "prior_scale", "lr_dictionary",
                     "lr_encoder", "gamma_kl_weight"):
            if getattr(self, name) < 0:
                bad(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.threshold is not None and self.threshold < 0:
            bad(f"threshold (lambda) must be >= 0, got {self.threshold}")
        if self.kappa is not None and self.kappa < 0:
            bad(f"kappa must be >= 0, got {self.kappa}")
        for name in ("num_samples", "epochs", "batch_size", "n_train", "n_val", "patch_size",
                     "latent_dim", "eval_rows", "iwae_k", "snr_samples", "jaccard_passes",
                     "check_every"):
            if getattr(self, name) < 1:
                bad(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.prior_scale == 0:
            bad("prior_scale must be > 0")
        if not 0 <= self.seed < 2**32:  # numpy's range; torch's epoch orders use seed * 100003
            bad(f"seed must be in [0, 2**32), got {self.seed}")
        try:
            torch.device(self.device)
        except RuntimeError:
            bad(f"device={self.device!r}: expected a torch device such as 'cpu' or 'cuda:0'")
        if self.fista_tol is not None and self.fista_tol < 0:
            bad(f"fista_tol must be >= 0, got {self.fista_tol}")
        if self.warmup_delay < 0:
            bad(f"warmup_delay must be >= 0, got {self.warmup_delay}")
        if self.cuda_graphs and self.method != "variational":
            bad("cuda_graphs=true needs method='variational' (FISTA's stopping test reads "
                "the device at every iteration)")
        if self.cuda_graphs and torch.device(self.device).type != "cuda":
            bad(f"cuda_graphs=true needs device='cuda', got device={self.device!r}")

    # -- what the convention resolves (vsc/conventions.py) ---------------------------------
    @property
    def public_code(self) -> bool:
        return self.convention == "public_code"

    @property
    def elbo_method(self) -> str:
        """The ``linear_elbo`` method: ``sampling``, except that the public code's
        "iwae" is the softmin-weighted sum."""
        return "softmin" if self.sampling == "iwae" and self.public_code else self.sampling

    @property
    def sampler_estimator(self) -> str:
        """The ``threshold_sample`` estimator: the public code's straight-through keeps
        the gradient of the shift on active entries ("straight_shift"); without a
        threshold (the Gaussian and Laplacian rows) it has no thresholding step, so the
        plain reparameterization gradient ("straight") is the public code's."""
        thresholded = getattr(PRIORS[self.prior], "default_threshold", None) is not None
        if self.estimator == "straight" and self.public_code and thresholded:
            return "straight_shift"
        return self.estimator

    @property
    def objective_weight(self) -> float:
        """``c`` in objective (10) ``c ||x - Az||^2 + lambda ||z||_1``: 0.5 in the public
        code (the paper's Table 1 scale), 1 in the paper's equation."""
        return 0.5 if self.public_code else 1.0

    @property
    def fista_tolerance(self) -> float:
        if self.fista_tol is not None:
            return self.fista_tol
        return 1e-3 if self.public_code else 1e-4

    @property
    def frobenius_weight(self) -> float:
        if self.kappa is not None:
            return self.kappa
        return 1e-3 if self.method == "fista" else 1e-4

    def prior_options(self) -> dict:
        options = {"prior_scale": self.prior_scale, "warmup_step": self.warmup_step}
        if self.warmup_start is not None:
            options["warmup_start"] = self.warmup_start
        if self.prior == "spike_slab":
            options.update(spike_prior=self.spike_prior, warmup_delay=self.warmup_delay,
                           tau_decay=self.tau_decay, public_code=self.public_code)
            return options
        if self.public_code:
            # The public code warms up the Laplace base only, after warmup_delay steps.
            if PRIORS[self.prior].base == "laplace":
                options["warmup_delay"] = self.warmup_delay
            elif self.warmup_start is None:
                options["warmup_start"] = 1.0
        options.update(estimator=self.sampler_estimator, shift_gradient=self.shift_gradient,
                       learn_threshold=self.learn_threshold,
                       gamma_alpha0=self.gamma_alpha0, gamma_kl_weight=self.gamma_kl_weight)
        if self.threshold is not None:
            options["threshold"] = self.threshold
        return options

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def read_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        text = path.read_text()
    except UnicodeDecodeError as error:
        raise ConfigError([f"{path}: not a text file ({error.reason})"]) from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as error:
            raise ValueError(f"{path}: YAML configs need PyYAML (pip install pyyaml)") from error
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            raise ConfigError([f"{path}: not valid YAML: {error}".splitlines()[0]]) from None
    elif path.suffix == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError([f"{path}: not valid JSON: {error}"]) from None
    else:
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError([f"{path}: not valid TOML: {error}"]) from None
    if not isinstance(values, dict):
        raise ConfigError([f"{path}: expected a table of key = value, got a "
                           f"{type(values).__name__}"])
    return values


def config_class(values: dict) -> type:
    """The dataclass a config's values describe: ``generator = "dnn"`` is a DNN-generator
    run (:class:`vsc.dnn.config.DnnConfig`), ``"linear"`` (the default) the linear
    generator's :class:`Config`."""
    generator = values.get("generator", "linear")
    if generator == "dnn":
        from .dnn.config import DnnConfig
        return DnnConfig
    if generator != "linear":
        raise ConfigError([f"config: generator={generator!r}: expected one of 'linear', 'dnn'"])
    return Config


def build_config(values: dict, overrides: list[str] = ()):
    """A :class:`Config` or :class:`vsc.dnn.config.DnnConfig` (:func:`config_class`) from
    a file's ``values`` and ``key=value`` overrides (which win); :class:`ConfigError`
    lists every unknown key and badly typed value, one per line."""
    parsed, raw, errors = split_overrides(overrides)
    errors = [f"config: {line}" for line in errors]
    cls = config_class({**values, **parsed})
    extra = {**SWITCHES, "generator": str} if cls is Config else {}
    checked = []
    for part, text in ((values, None), (parsed, raw)):
        try:
            checked.append(check_values(cls, part, text, extra=extra))
        except ConfigError as error:
            errors += error.lines
    if errors:
        raise ConfigError(errors)
    values = {**checked[0], **checked[1]}
    if cls is not Config:
        return cls(**values)
    values.pop("generator", None)
    quick = values.pop("quick", False)
    full = values.pop("full", False)
    if quick and not full:
        values = {**QUICK, **values}   # explicit values win over the quick defaults
    return Config(**values)


def load_config(path: str | Path | None, overrides: list[str] = ()):
    values = read_file(path) if path is not None else {}
    if "name" not in values and path is not None:
        values["name"] = Path(path).stem
    return build_config(values, overrides)


# `quick = true` (the README's main job): about 4 minutes on 2 CPU cores, 20,000 patches
# x 40 epochs = 8,000 steps (Appendix D: 240,000). The warm-ups and the temperature
# schedule run 5x faster so that they end within the run (the scale warm-up at step
# 1,200); `--full` (or `full = true`) ignores `quick` and runs Appendix D's schedule.
SWITCHES = {"quick": bool, "full": bool}  # keys of a config file that are not fields
QUICK = dict(n_train=20000, n_val=4000, epochs=40, eval_rows=500, iwae_k=50, snr_samples=20,
             warmup_step=1e-3, warmup_delay=300, tau_decay=0.9975, fista_warmup_step=5e-4,
             fista_max_iter=200)
