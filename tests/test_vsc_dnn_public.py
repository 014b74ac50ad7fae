"""The DNN trainer's conventions against the paper's public code (kfallah/variational-
sparse-coding), run side by side on the same inputs and noise: the networks of Tables 4/5
(``model/feature_enc.py``), the per-sample loss and its selection
(``model/reparameterization.py``: ``compute_recon_loss``, ``compute_loss``, ``fixed_kl``),
the thresholded Gaussian sampler of the DNN scripts (no warm-up) and the learning-rate
schedule (``model/scheduler.py``: ``CycleScheduler``).

The public code is read from a git mirror (``VSC_PUBLIC_CODE``, default the project's
read-only mirror); where it is absent (a fresh CI clone) these tests are skipped.
"""

import copy
import io
import os
import subprocess
import sys
import tarfile
from types import SimpleNamespace

import pytest
import torch

import vsc_kernels
from vsc.dnn.models import Decoder, Encoder
from vsc.dnn.train import cycle_lr_factor
from vsc.priors import make_prior
from vsc_kernels._philox import base_noise, draw_seed, philox_lanes

MIRROR = os.environ.get("VSC_PUBLIC_CODE", "/work/.mirror/kfallah+variational-sparse-coding/repo")


@pytest.fixture(scope="module")
def public(tmp_path_factory):
    if not os.path.isdir(MIRROR):
        pytest.skip(f"the public code's mirror is not here ({MIRROR})")
    root = tmp_path_factory.mktemp("public")
    archive = subprocess.run(["git", "-C", MIRROR, "archive", "HEAD"], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    sys.path.insert(0, str(root))
    try:
        import model.feature_enc as feature_enc
        import model.reparameterization as reparameterization
        import model.scheduler as scheduler
        yield SimpleNamespace(feature_enc=feature_enc, rep=reparameterization,
                              scheduler=scheduler)
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == "model" or m.startswith(("model.", "utils"))]:
            del sys.modules[name]


def _copy_weights(ours, theirs):
    """Load our tensors into the public module in order (same layers, same order)."""
    mine = [t for k, t in ours.state_dict().items() if not k.startswith("heads.")]
    keys = list(theirs.state_dict())
    assert [tuple(t.shape) for t in mine] == [tuple(theirs.state_dict()[k].shape) for k in keys]
    theirs.load_state_dict(dict(zip(keys, mine)))


@pytest.mark.parametrize("architecture,shape,channels,size",
                         [("fmnist", (1, 28, 28), 1, 28), ("celeba", (3, 64, 64), 3, 64)])
def test_networks_are_the_public_codes(public, architecture, shape, channels, size):
    torch.manual_seed(0)
    encoder, decoder = Encoder(architecture, 20, ("mu", "logb")), Decoder(architecture, 20)
    their_encoder = public.feature_enc.ConvEncoder(20, channels, im_size=size)
    their_decoder = public.feature_enc.ConvDecoder(20, channels, im_size=size)
    _copy_weights(encoder, their_encoder)
    _copy_weights(decoder, their_decoder)
    x = torch.rand(6, *shape)
    z = torch.randn(3, 2, 20)
    for mode in ("train", "eval"):
        for m in (encoder, decoder, their_encoder, their_decoder):
            getattr(m, mode)()
        features = encoder.backbone(x).flatten(1)
        torch.testing.assert_close(features, their_encoder(x))
        images = decoder(z)     # once per mode: train mode updates the running statistics
        torch.testing.assert_close(images, their_decoder(z))
        assert images.shape == (3, 2, *shape)


def _solver_args(**values):
    return SimpleNamespace(**{"prior_method": "fixed", "threshold": True, "theshold_learn": False,
                              "spread_prior": 0.1, "num_samples": 5, **values})


@pytest.mark.parametrize("method", ["max", "avg"])
@pytest.mark.parametrize("prior", ["gaussian", "laplacian"])
def test_loss_scaling_and_selection_are_the_public_codes(public, method, prior):
    """Per-pixel mean squared error + beta * KL summed over latents, selected over J."""
    torch.manual_seed(1)
    B, J, d, beta = 4, 5, 12, 1e-2
    decoder = Decoder("fmnist", d).double().eval()
    x = torch.rand(B, 1, 28, 28, dtype=torch.float64)
    shift = torch.randn(B, d, dtype=torch.float64, requires_grad=True)
    logscale = (0.3 * torch.randn(B, d, dtype=torch.float64)).requires_grad_()
    z = torch.randn(B, J, d, dtype=torch.float64) * 0.5
    args = _solver_args(prior_distribution=prior)
    rep = lambda t: t[:, None].expand(-1, J, *t.shape[1:])  # noqa: E731
    kl = public.rep.fixed_kl(args, shift=rep(shift), logscale=rep(logscale))
    recon = public.rep.compute_recon_loss(rep(x), z, decoder)
    _, theirs = public.rep.compute_loss(z, recon.mean(-1), beta * kl.sum(-1), None, method)
    ours_prior = make_prior(prior, d, prior_scale=0.1)
    our_kl = ours_prior.kl_per_dim({"mu": shift, "logb": logscale}).sum(-1)
    ours = vsc_kernels.elbo_select(x, decoder(z), our_kl, beta=beta, method=method,
                                   recon="mean").loss
    torch.testing.assert_close(ours, theirs)
    g_ours = torch.autograd.grad(ours, (shift, logscale))
    g_theirs = torch.autograd.grad(theirs, (shift, logscale))
    for a, b in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("prior,lam", [("gaussian", 0.52), ("laplacian", 0.23)])
def test_thresholded_sampling_is_the_public_dnn_scripts(public, monkeypatch, prior, lam):
    """Same noise: the public DNN scripts' thresholded samplers -- the Gaussian (no warm-up)
    and the Laplacian (warm-up set to 1 before training, ``ramp_hyperparams``) -- equal
    threshold_sample with warmup 1 and estimator "straight_shift" (the public code's
    straight-through, whose shift keeps its gradient on active entries)."""
    torch.manual_seed(2)
    B, J, d = 6, 5, 16
    base = "gaussian" if prior == "gaussian" else "laplace"
    mu = torch.randn(B, d, dtype=torch.float64, requires_grad=True)
    logb = (0.5 * torch.randn(B, d, dtype=torch.float64) - 1.0).requires_grad_()
    generator = torch.Generator().manual_seed(7)
    seed = draw_seed(torch.device("cpu"), copy.deepcopy(generator))
    ours = vsc_kernels.threshold_sample(mu, logb, lam, num_samples=J, base=base,
                                        estimator="straight_shift", warmup=1.0,
                                        generator=copy.deepcopy(generator))
    if base == "gaussian":
        eps = base_noise("gaussian", seed, B * J, d, dtype=torch.float64).reshape(B, J, d)
        monkeypatch.setattr(torch, "randn_like", lambda t: eps.to(t.dtype))
    else:   # the uniform our Laplace noise is the inverse CDF of (_philox.laplace_noise)
        m = 2 * (philox_lanes(seed, B * J, d) >> 8) - 2**24 + 1
        u = (m.to(torch.float64) / 2**25).reshape(B, J, d)
        monkeypatch.setattr(torch, "rand_like", lambda t: (u + 0.5).to(t.dtype))
    encoder = SimpleNamespace(lambda_=torch.full((B, J, d), lam, dtype=torch.float64),
                              warmup=1.0)
    encoder.soft_threshold = lambda v: torch.relu(v.abs() - encoder.lambda_) * torch.sign(v)
    captured = {}

    def capture_recon(x, z, A):
        captured["z"] = z
        return torch.zeros(*z.shape[:2], 1, dtype=z.dtype)

    monkeypatch.setattr(public.rep, "compute_recon_loss", capture_recon)
    args = _solver_args(prior_distribution=prior, estimator="straight", kl_weight=0.0,
                        sample_method="avg", num_samples=J)
    sampler = public.rep.sample_gaussian if base == "gaussian" else public.rep.sample_laplacian
    sampler(mu, logb, torch.zeros(B, 1), None, encoder, args)
    theirs = captured["z"]
    torch.testing.assert_close(ours, theirs)
    assert 0 < (ours == 0).double().mean() < 1
    weight = torch.randn(B, J, d, dtype=torch.float64)
    g_ours = torch.autograd.grad((ours * weight).sum(), (mu, logb))
    g_theirs = torch.autograd.grad((theirs * weight).sum(), (mu, logb))
    for a, b in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("total", [200, 1001])
def test_learning_rate_schedule_is_the_public_cycle_scheduler(public, total):
    lr = 3e-4
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = public.scheduler.CycleScheduler(optimizer, lr, n_iter=total, momentum=None,
                                                warmup_proportion=0.05)
    for step in range(1, total + 1):      # the lr the public loop trains step `step` with
        scheduler.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(
            lr * cycle_lr_factor(step, total, 0.05), rel=1e-9, abs=1e-15), step
