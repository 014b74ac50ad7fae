"""``convention="public_code"`` against numbers computed by the paper's public code.

``tests/public_code_reference.json`` holds what the public code
(kfallah/variational-sparse-coding, commit 64abb630, 2022-05-07) computed in float64 on
the closed-form inputs below, with our Philox noise fed into it; it was written by
``tests/public_code_reference.py`` (see its docstring; it needs a checkout of the public
code, which this project does not ship, so CI only reads the JSON). Each test runs what
``vsc`` runs under the convention and checks it against those numbers to float64
round-off; each also checks that the paper's equation differs, so the test would fail
against the other convention.
"""

import json
import math
from pathlib import Path

import pytest
import torch

import vsc_kernels
from vsc import conventions
from vsc.config import Config
from vsc.priors import make_prior
from vsc.priors.base import linear_warmup
from vsc.train import elbo_loss

REF = json.loads(Path(__file__).with_name("public_code_reference.json").read_text())
F64 = dict(rtol=1e-11, atol=1e-13)


def _t(values):
    return torch.tensor(values, dtype=torch.float64)


# -- the inputs both sides saw (public_code_reference.py imports these) --------------------

def inputs(B, J, d, D):
    """Closed-form float64 ``x (B, D)``, ``A (D, d)``, shift and log-scale ``(B, d)``, and a
    positive ``(B, J, d)`` pattern (learned thresholds, sparse codes)."""
    b = torch.arange(B, dtype=torch.float64)[:, None]
    i = torch.arange(D, dtype=torch.float64)
    k = torch.arange(d, dtype=torch.float64)
    x = torch.sin(1.3 * b + 0.7 * i + 0.1)
    A = torch.cos(0.9 * i[:, None] - 1.7 * k + 0.3) / 3
    shift = 0.3 * torch.sin(2.1 * b + 1.1 * k)
    logscale = math.log(0.4) + 0.3 * torch.cos(1.7 * b - 0.4 * k)
    j = torch.arange(J, dtype=torch.float64)[:, None]
    pattern = 1.0 + 0.5 * torch.sin(b[:, :, None] + 2.0 * j + 3.0 * k)
    return x, A, shift, logscale, pattern


def softmin_matrix():
    return 1.5 + 1.5 * torch.sin(torch.arange(20, dtype=torch.float64).reshape(4, 5) * 0.77)


def fista_problem():
    x, A, *_ = inputs(5, 1, 24, 16)
    A = A + 0.2 * torch.sin(torch.arange(16 * 24, dtype=torch.float64).reshape(16, 24) ** 1.5)
    return x, A / A.norm(dim=0)


def dictionary_problem():
    x, A, _, _, pattern = inputs(4, 5, 6, 9)
    z = torch.sin(7.0 * pattern) * (torch.cos(5.0 * pattern) > 0)
    kl = 30 * (1 + torch.sin(torch.arange(4, dtype=torch.float64))) / 2
    return x, A, z, kl


def spike_slab_problem():
    """The spike head's output (both signs) and the normal and uniform noise ``(B, J, d)``."""
    x, A, shift, logscale, pattern = inputs(3, 4, 6, 9)
    head = 0.9 * torch.sin(7.0 * shift - 0.5)
    return x, A, shift, logscale, head, torch.sin(11.0 * pattern), 0.5 + 0.45 * torch.cos(13.0 * pattern)


NOISE_SEED = 7       # torch.manual_seed before the sampler: its Philox seed comes from it
WARMUP_STEP = 2500   # under the public code's schedule the Laplace warm-up is 0.3 here


# -- sampling + ELBO: sample_laplacian / sample_gaussian + compute_loss --------------------

CASES = {
    # name in the JSON: (prior, sampling, estimator)
    "thresholded_laplacian_straight_max": ("thresholded_laplacian", "max", "straight"),
    "thresholded_laplacian_straight_avg": ("thresholded_laplacian", "avg", "straight"),
    "thresholded_laplacian_straight_iwae": ("thresholded_laplacian", "iwae", "straight"),
    "laplacian_straight_max": ("laplacian", "max", "straight"),
    "thresholded_gaussian_straight_max": ("thresholded_gaussian", "max", "straight"),
    "thresholded_gaussian_straight_iwae": ("thresholded_gaussian", "iwae", "straight"),
    "gaussian_max": ("gaussian", "max", "straight"),
    "thresholded_gaussian_subgradient_max": ("thresholded_gaussian", "max", "subgradient"),
}


def _elbo_grads(config, shift, logscale, A, x, J, lam=None):
    """What vsc runs: the prior's sampler at WARMUP_STEP (or threshold_sample with an
    explicit threshold tensor) and linear_elbo with the convention's method."""
    leaves = [t.clone().requires_grad_() for t in (shift, logscale, A)]
    if lam is not None:
        leaves.append(lam.clone().requires_grad_())
    torch.manual_seed(NOISE_SEED)
    if lam is None:
        prior = make_prior(config.prior, shift.shape[1], **config.prior_options())
        sample = prior.sample({"mu": leaves[0], "logb": leaves[1]}, J, WARMUP_STEP)
        z, kl = sample.z, sample.kl
    else:
        z, kl = vsc_kernels.threshold_sample(
            leaves[0], leaves[1], leaves[3], num_samples=J, estimator=config.sampler_estimator,
            warmup=linear_warmup(WARMUP_STEP, 0.1, 2e-4, 1500), return_kl=True,
            prior_scale=0.1)
    loss = vsc_kernels.linear_elbo(x, z, leaves[2], kl, beta=config.beta,
                                   method=config.elbo_method, recon=config.recon).loss
    return loss, torch.autograd.grad(loss, leaves)


def _check(ref, loss, grads, learned=False):
    assert loss.item() == pytest.approx(ref["loss"], rel=1e-12, abs=1e-14)
    torch.testing.assert_close(grads[0], _t(ref["grad_shift"]), **F64)
    torch.testing.assert_close(grads[1], _t(ref["grad_logscale"]), **F64)
    torch.testing.assert_close(grads[2][0], _t(ref["grad_A_row0"]), **F64)
    if learned:
        torch.testing.assert_close(grads[3][0], _t(ref["grad_lam_row0"]), **F64)


@pytest.mark.parametrize("name", list(CASES))
def test_sampling_and_elbo_match_the_public_code(name):
    prior, sampling, estimator = CASES[name]
    x, A, shift, logscale, _ = inputs(3, 4, 6, 9)
    config = Config(prior=prior, sampling=sampling, estimator=estimator)
    assert config.convention == "public_code" and config.recon == "mean"
    loss, grads = _elbo_grads(config, shift, logscale, A, x, J=4)
    _check(REF[name], loss, grads)
    # The paper's equations (eq. 4, Burda's IWAE, the warm-up from step 0) differ.
    paper = Config(prior=prior, sampling=sampling, estimator=estimator,
                   convention="paper_equations")
    if (paper.sampler_estimator, paper.elbo_method, paper.prior_options()) != (
            config.sampler_estimator, config.elbo_method, config.prior_options()):
        loss_p, grads_p = _elbo_grads(paper, shift, logscale, A, x, J=4)
        assert (not math.isclose(loss_p.item(), REF[name]["loss"], rel_tol=1e-9)
                or not torch.allclose(grads_p[0], _t(REF[name]["grad_shift"])))


@pytest.mark.parametrize("sampling", ["max", "iwae"])
def test_learned_threshold_gradient_matches_the_public_code(sampling):
    x, A, shift, logscale, pattern = inputs(3, 4, 6, 9)
    config = Config(prior="thresholded_laplacian", sampling=sampling, learn_threshold=True)
    loss, grads = _elbo_grads(config, shift, logscale, A, x, J=4, lam=0.25 * pattern)
    _check(REF[f"thresholded_laplacian_learned_lam_{sampling}"], loss, grads, learned=True)


def test_softmin_is_the_public_codes_iwae_and_not_burdas_bound():
    L = softmin_matrix()
    row, _, weights = vsc_kernels._elbo.select_samples(L, "softmin")
    assert row.mean().item() == pytest.approx(REF["softmin_loss"], rel=1e-14)
    # compute_loss's autograd gradient of its mean over the 4 rows is weights / 4.
    torch.testing.assert_close(weights / 4, _t(REF["softmin_grad"]), **F64)
    burda, _, _ = vsc_kernels._elbo.select_samples(L, "iwae")
    assert abs(burda.mean().item() - REF["softmin_loss"]) > 1e-3


def test_fista_from_the_public_codes_start():
    x, A = fista_problem()
    lipschitz = torch.linalg.matrix_norm(A, ord=2).item() ** 2
    codes = vsc_kernels.fista(x, A, 0.4, max_iter=7, tol=0.0, init=x @ A, lipschitz=lipschitz,
                              backend="reference").codes
    torch.testing.assert_close(codes, _t(REF["fista_7_iterations"]), rtol=0, atol=1e-14)
    from_zero = vsc_kernels.fista(x, A, 0.4, max_iter=7, tol=0.0, lipschitz=lipschitz,
                                  backend="reference").codes
    assert (from_zero - codes).abs().max() > 1e-3


def test_encoder_schedule_is_the_public_cycle_scheduler():
    """CycleScheduler(opt, 1e-2, n_iter=400, momentum=None, warmup_proportion=0.05): the
    rate each optimizer step used, at steps 0, 1, 2, 19, 20, 21, 100, 399."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1e-2, momentum=0.9, nesterov=True)
    sched = conventions.encoder_scheduler(opt, "public_code", 1e-2, 400)
    used = []
    for _ in range(400):
        used.append(opt.param_groups[0]["lr"])
        assert opt.param_groups[0]["momentum"] == 0.9
        opt.step()
        sched.step()
    got = [used[i] for i in (0, 1, 2, 19, 20, 21, 100, 399)]
    assert got == pytest.approx(REF["cycle_lrs_400"], rel=1e-12, abs=1e-18)


def test_laplace_warmup_is_held_for_1500_steps():
    config = Config(prior="thresholded_laplacian")
    prior = make_prior(config.prior, 4, **config.prior_options())
    for step, w in REF["warmup"].items():
        assert prior.warmup(int(step)) == pytest.approx(w, abs=1e-12), step
    gaussian = make_prior("thresholded_gaussian", 4,
                          **Config(prior="thresholded_gaussian").prior_options())
    assert gaussian.warmup(0) == 1.0            # the public code never warms the Gaussian
    paper = Config(prior="thresholded_laplacian", convention="paper_equations")
    assert make_prior(paper.prior, 4, **paper.prior_options()).warmup(1000) == pytest.approx(0.3)


@pytest.mark.parametrize("sampling", ["max", "avg", "iwae"])
def test_dictionary_step_matches_train_vsc_dict(sampling):
    """The public code steps A += lr (step - 2 kappa A) with ``step`` from its loop; the
    gradient of vsc's ELBO term with respect to A is ``-step``."""
    x, A, z, kl = dictionary_problem()
    A = A.clone().requires_grad_()
    method = Config(sampling=sampling).elbo_method
    loss, _ = elbo_loss(x, z, kl, A, beta=0.01, method=method, recon="mean")
    grad, = torch.autograd.grad(loss, A)
    torch.testing.assert_close(-grad[0], _t(REF[f"dict_step_{sampling}_row0"]), **F64)


def test_spike_and_slab_matches_sample_concreteslab():
    x, A, shift, logscale, head, eps, eta = spike_slab_problem()
    J, d = eps.shape[1:]
    config = Config(prior="spike_slab")
    prior = make_prior("spike_slab", d, **config.prior_options())
    prior.temperature = lambda step: 0.8
    leaves = [t.clone().requires_grad_() for t in (shift, logscale, head, A)]
    with pytest.MonkeyPatch.context() as mp:   # the noise both sides were given
        mp.setattr(torch, "randn_like", lambda t: eps.clone())
        mp.setattr(torch, "rand_like", lambda t: eta.clone())
        sample = prior.sample({"mu": leaves[0], "logvar": leaves[1], "log_gamma": leaves[2]},
                              J, 1500 + 1350)           # warm-up 0.37
    loss = vsc_kernels.linear_elbo(x, sample.z, leaves[3], sample.kl, beta=0.01, method="max",
                                   recon="mean").loss
    grads = torch.autograd.grad(loss, leaves)
    ref = REF["spike_slab"]
    assert loss.item() == pytest.approx(ref["loss"], rel=1e-12)
    torch.testing.assert_close(grads[0], _t(ref["grad_mu"]), **F64)
    torch.testing.assert_close(grads[2], _t(ref["grad_head"]), **F64)
