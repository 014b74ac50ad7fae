"""Priors of Table 1 (vsc.priors): shapes, gradients, schedules, and log densities
that are consistent with the KL terms and normalized (importance weights of q
against p average to 1)."""

import math

import pytest
import torch

from vsc.priors import PRIORS, make_prior
from vsc.priors.base import linear_warmup

CASES = [("gaussian", {}), ("laplacian", {}), ("spike_slab", {}),
         ("thresholded_gaussian", {}), ("thresholded_laplacian", {}),
         ("thresholded_gaussian", {"learn_threshold": True}),
         ("thresholded_laplacian", {"learn_threshold": True})]


def _params(prior, B, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = {}
    for head in prior.heads:
        value = 0.3 * torch.randn(B, d, generator=g)
        if head in ("logb", "logvar"):
            value = value - 2.3            # scale near the prior's 0.1
        if head == "log_alpha":
            value = value + math.log(3.0)
        if head == "log_beta":
            value = value + math.log(12.0)
        params[head] = value.requires_grad_()
    return params


@pytest.mark.parametrize("name,options", CASES)
def test_sample_shapes_and_gradients_reach_every_head(name, options):
    torch.manual_seed(0)
    prior = make_prior(name, 16, **options)
    params = _params(prior, 6, 16)
    sample = prior.sample(params, 5, step=10_000)
    assert sample.z.shape == (6, 5, 16)
    assert sample.kl.shape == (6,)
    assert torch.isfinite(sample.kl).all()
    (sample.z.sum() + sample.kl.sum()).backward()
    for head, value in params.items():
        assert value.grad is not None and value.grad.abs().sum() > 0, head


@pytest.mark.parametrize("name", ["gaussian", "laplacian", "spike_slab"])
def test_log_density_ratio_averages_to_minus_kl(name):
    """E_q[log p(z) - log q(z|x)] = -KL(q || p) where the KL is exact (no threshold)."""
    torch.manual_seed(1)
    prior = make_prior(name, 4)
    params = {k: v.detach() for k, v in _params(prior, 3, 4).items()}
    sample = prior.log_density_sample(params, 40_000, step=10_000)
    kl = prior.kl_per_dim(params).sum(-1)
    mc = -sample.log_prior_ratio.mean(1)
    stderr = sample.log_prior_ratio.std(1) / math.sqrt(40_000)
    assert torch.all((mc - kl).abs() < 5 * stderr + 1e-3), (mc, kl)


@pytest.mark.parametrize("name,options", CASES)
def test_importance_weights_are_normalized(name, options):
    """E_q[p(z)/q(z|x)] = 1 for a proper pair of densities (spike + slab included): a
    wrong spike mass or slab density moves this mean away from 1."""
    torch.manual_seed(2)
    prior = make_prior(name, 1, **options)
    params = {k: v.detach() for k, v in _params(prior, 2, 1, seed=3).items()}
    params["mu"] = torch.tensor([[0.05], [-0.08]])
    # q wider than p (scale and threshold), so that p/q is bounded and the Monte Carlo
    # mean converges (the other way round the weights have infinite variance).
    for head in ("logb", "logvar"):
        if head in params:
            params[head] = torch.full((2, 1), math.log(0.1) + 0.4)
    if "log_beta" in params:
        params["log_alpha"] = torch.full((2, 1), math.log(3.0))
        params["log_beta"] = torch.full((2, 1), math.log(0.8 * prior.gamma.beta0))
    ratio = prior.log_density_sample(params, 200_000, step=10_000).log_prior_ratio
    mean = ratio.exp().mean(1)
    assert torch.allclose(mean, torch.ones(2), atol=0.05), mean


def test_thresholded_zero_fraction_matches_its_log_density():
    torch.manual_seed(4)
    prior = make_prior("thresholded_laplacian", 8)
    params = {"mu": torch.zeros(1, 8), "logb": torch.full((1, 8), math.log(0.1))}
    sample = prior.log_density_sample(params, 20_000, step=10_000)
    # Prop. 3.1 with b = 0.1, lam = 0.25: P(z != 0) = exp(-2.5)
    assert abs((sample.z != 0).float().mean().item() - math.exp(-2.5)) < 0.005


def test_schedules_follow_appendix_d():
    assert linear_warmup(0, 0.1, 2e-4) == pytest.approx(0.1)
    assert linear_warmup(2000, 0.1, 2e-4) == pytest.approx(0.5)
    assert linear_warmup(10**6, 0.1, 2e-4) == 1.0
    spike = make_prior("spike_slab", 4)
    assert spike.warmup(1500) == 0.0 and spike.warmup(2000) == pytest.approx(0.1)
    assert spike.temperature(0) == 1.0
    assert spike.temperature(100) == pytest.approx(0.9995 ** 100)
    assert spike.temperature(10**5) == 0.5
    assert make_prior("thresholded_laplacian", 4).warmup(0) == pytest.approx(0.1)


def test_gamma_threshold_kl_and_samples():
    torch.manual_seed(5)
    prior = make_prior("thresholded_laplacian", 3, learn_threshold=True)
    alpha, beta = 3.0, 3.0 / 0.25                   # equal to the prior: KL = 0
    params = {"mu": torch.zeros(2, 3), "logb": torch.full((2, 3), -2.3),
              "log_alpha": torch.full((2, 3), math.log(alpha)),
              "log_beta": torch.full((2, 3), math.log(beta))}
    q = prior.gamma.posterior(params)
    assert torch.allclose(prior.gamma.kl(q), torch.zeros(2), atol=1e-6)
    lam = prior.gamma.sample(q, 20_000)
    assert lam.shape == (2, 20_000, 3)
    assert abs(lam.mean().item() - 0.25) < 0.005
    params["log_alpha"] = torch.full((2, 3), math.log(30.0))
    assert (prior.gamma.kl(prior.gamma.posterior(params)) > 0).all()


def test_registry_and_bad_options():
    assert set(PRIORS) == {"gaussian", "laplacian", "spike_slab", "thresholded_gaussian",
                           "thresholded_laplacian"}
    with pytest.raises(ValueError, match="unknown prior 'cauchy'"):
        make_prior("cauchy", 4)
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        make_prior("thresholded_laplacian", 4, threshold=-0.1)
    with pytest.raises(ValueError, match="has no threshold"):
        make_prior("gaussian", 4, threshold=0.3)
    with pytest.raises(ValueError, match="spike_prior"):
        make_prior("spike_slab", 4, spike_prior=1.5)
    with pytest.raises(ValueError, match="latent_dim"):
        make_prior("laplacian", 0)
