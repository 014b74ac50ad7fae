"""Bad input gets a clear ValueError/TypeError naming the argument, before any kernel."""

import pytest
import torch

import vsc_kernels
from vsc_kernels import _dispatch


def call(**overrides):
    args = dict(mu=torch.zeros(4, 8), logb=torch.zeros(4, 8), lam=0.1)
    args.update(overrides)
    mu, logb, lam = args.pop("mu"), args.pop("logb"), args.pop("lam")
    return vsc_kernels.threshold_sample(mu, logb, lam, backend="reference", **args)


@pytest.mark.parametrize("overrides,error,match", [
    (dict(lam=-0.1), ValueError, "lam must be >= 0"),
    (dict(lam=torch.tensor([0.1, -0.2] * 4)), ValueError, "lam must be >= 0 everywhere"),
    (dict(lam=torch.full((8,), float("nan"))), ValueError, "lam contains NaN"),
    (dict(lam=float("nan")), ValueError, "lam must be finite"),
    (dict(lam="0.1"), TypeError, "lam must be a real number"),
    (dict(lam=torch.ones(8, dtype=torch.int64)), TypeError, "lam must have a floating-point"),
    (dict(lam=torch.ones(5)), ValueError, r"lam of shape \(5,\) does not broadcast"),
    (dict(lam=torch.ones(4, 8), num_samples=3), ValueError, "lam of shape"),
    (dict(logb=torch.zeros(4, 7)), ValueError, "logb must have mu's shape"),
    (dict(mu=torch.zeros(4, 8, dtype=torch.int32)), TypeError, "mu must have a floating-point"),
    (dict(logb=torch.zeros(4, 8, dtype=torch.int64)), TypeError, "logb must have a floating"),
    (dict(mu=[0.0] * 8), TypeError, "mu must be a torch.Tensor"),
    (dict(mu=torch.tensor(1.0), logb=torch.tensor(0.0)), ValueError, "at least one dimension"),
    (dict(base="cauchy"), ValueError, "base must be one of"),
    (dict(estimator="gumbel"), ValueError, "estimator must be one of"),
    (dict(num_samples=0), ValueError, "num_samples must be >= 1"),
    (dict(num_samples=2.0), TypeError, "num_samples must be an int"),
    (dict(num_samples=True), TypeError, "num_samples must be an int"),
    (dict(warmup=-1.0), ValueError, "warmup must be >= 0"),
    (dict(prior_scale=0.0), ValueError, "prior_scale must be > 0"),
    (dict(generator=123), TypeError, "generator must be a torch.Generator"),
])
def test_bad_arguments(overrides, error, match):
    with pytest.raises(error, match=match):
        call(**overrides)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        vsc_kernels.threshold_sample(torch.zeros(2, 3), torch.zeros(2, 3), 0.1, backend="cuda")


def test_unknown_backend_from_environment(monkeypatch):
    monkeypatch.setenv(_dispatch.BACKEND_ENV, "fast")
    with pytest.raises(ValueError, match=r"\$VSC_KERNELS_BACKEND must be one of"):
        vsc_kernels.threshold_sample(torch.zeros(2, 3), torch.zeros(2, 3), 0.1)


def test_backend_device_mismatch(monkeypatch):
    with pytest.raises(ValueError, match="backend='cpp' runs on CPU tensors"):
        _dispatch.resolve_backend("cpp", "cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if _dispatch.triton_installed():
        with pytest.raises(ValueError, match="backend='triton' runs on CUDA tensors"):
            _dispatch.resolve_backend("triton", "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs two devices")
def test_mixed_devices():
    with pytest.raises(ValueError, match="logb is on cpu but mu is on cuda"):
        vsc_kernels.threshold_sample(torch.zeros(2, 3, device="cuda"), torch.zeros(2, 3), 0.1)
    with pytest.raises(ValueError, match="lam is on cpu"):
        vsc_kernels.threshold_sample(torch.zeros(2, 3, device="cuda"),
                                     torch.zeros(2, 3, device="cuda"), torch.ones(3))


def test_mixed_devices_meta():
    # Without a GPU, the meta device still exercises the device check.
    with pytest.raises(ValueError, match="logb is on meta but mu is on cpu"):
        vsc_kernels.threshold_sample(torch.zeros(2, 3), torch.zeros(2, 3, device="meta"), 0.1)
    with pytest.raises(ValueError, match="lam is on meta but mu is on cpu"):
        vsc_kernels.threshold_sample(torch.zeros(2, 3), torch.zeros(2, 3),
                                     torch.ones(3, device="meta"))


def test_kl_divergence_errors():
    with pytest.raises(ValueError, match="base must be one of"):
        vsc_kernels.kl_divergence(torch.zeros(3), torch.zeros(3), base="normal")
    with pytest.raises(ValueError, match="prior_scale must be > 0"):
        vsc_kernels.kl_divergence(torch.zeros(3), torch.zeros(3), prior_scale=-1.0)
    with pytest.raises(ValueError, match="logb must have mu's shape"):
        vsc_kernels.kl_divergence(torch.zeros(3), torch.zeros(4))
