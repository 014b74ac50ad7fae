"""Runs the paper's public code and ours on the same inputs and noise (float64) and writes
the public code's numbers to ``tests/public_code_reference.json``, which
``tests/test_public_code_conventions.py`` checks ``vsc``'s ``convention="public_code"``
against (without the public code, which this project does not ship).

    git -C /path/to/mirror archive HEAD | tar -x -C /tmp/vsc_public   # kfallah/variational-sparse-coding
    PYTHONPATH=.:/tmp/vsc_public python tests/public_code_reference.py

Recorded from commit 64abb630c7a9425af5f3fc14ae0b2c6382e0d4d6 (2022-05-07). What runs of
theirs: ``model/reparameterization.py`` (``sample_laplacian``, ``sample_gaussian``,
``sample_concreteslab``, ``compute_loss``), ``model/vi_encoder.py``
(``VIEncoder.soft_threshold``), ``utils/solvers.py`` (``FISTA``), ``model/scheduler.py``
(``CycleScheduler``) and, read from ``train_vsc_dict.py`` and executed as written, the
lines of its training loop that warm up the Laplacian scale and step the dictionary.
Their noise is replaced by ours (``torch.rand_like``/``torch.randn_like`` patched to
return the Philox noise of ``vsc_kernels.threshold_sample``), so both sides sample the
same codes. The comparisons print to stdout.
"""
import json
import math
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

# The public code imports packages only its CelebA/ResNet paths use; stub them.
for name in ("torchvision", "torchvision.models", "torchvision.datasets",
             "torchvision.transforms", "sklearn_extra", "sklearn_extra.cluster"):
    sys.modules.setdefault(name, types.ModuleType(name))
sys.modules["torchvision"].models = sys.modules["torchvision.models"]
sys.modules["sklearn_extra.cluster"].KMedoids = object

import vsc_kernels  # noqa: E402
from model import reparameterization as R          # noqa: E402  (the public code)
from model.scheduler import CycleScheduler          # noqa: E402  (the public code)
from model.vi_encoder import VIEncoder              # noqa: E402  (the public code)
from utils.solvers import FISTA                     # noqa: E402  (the public code)

PUBLIC = Path(R.__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_public_code_conventions import (dictionary_problem, fista_problem, inputs,  # noqa: E402
                                          softmin_matrix, spike_slab_problem)
torch.set_default_dtype(torch.float64)
np.set_printoptions(precision=17)
OUT = {}


def our_noise(base, B, J, d, seed):
    """The Philox noise threshold_sample draws for this shape and generator seed."""
    g = torch.Generator().manual_seed(seed)
    zeros = torch.zeros(B, d)
    return vsc_kernels.threshold_sample(zeros, zeros, 0.0, num_samples=J, base=base,
                                        generator=g, backend="reference")


class Enc:
    """What sample_laplacian/sample_gaussian read from the encoder."""
    def __init__(self, warmup, lam):
        self.warmup, self.lambda_ = warmup, lam
    soft_threshold = VIEncoder.soft_threshold


def public_sample(kind, shift, logscale, x, A, lam, warmup, eps, args):
    enc = Enc(warmup, lam)
    if kind == "laplacian":
        u = torch.sign(eps) * (-torch.expm1(-eps.abs())) / 2   # their inverse CDF gives eps back
        orig = torch.rand_like
        torch.rand_like = lambda t: u.clone() + 0.5
        try:
            return R.sample_laplacian(shift, logscale, x, A, enc, args)
        finally:
            torch.rand_like = orig
    orig = torch.randn_like
    torch.randn_like = lambda t: eps.clone()
    try:
        return R.sample_gaussian(shift, logscale, x, A, enc, args)
    finally:
        torch.randn_like = orig


def case(name, kind, threshold, estimator, method, warmup=0.3, learn=False, B=3, J=4, d=6,
         D=9, seed=7, our_est=None):
    x, A, shift, logscale, lam_learned = inputs(B, J, d, D)
    A.requires_grad_(); shift.requires_grad_(); logscale.requires_grad_()
    base = "laplace" if kind == "laplacian" else "gaussian"
    eps = our_noise(base, B, J, d, seed)
    lam_value = 0.25 if kind == "laplacian" else 0.52
    if learn:
        lam = (lam_value * lam_learned).requires_grad_()
    else:
        lam = torch.full((B, J, d), lam_value)
    args = SimpleNamespace(num_samples=J, threshold=threshold, theshold_learn=False,
                           estimator=estimator, prior_method="fixed",
                           prior_distribution=kind, spread_prior=0.1, kl_weight=0.01,
                           sample_method=method)
    # theirs
    loss_t, _, _, z_t, weight_t = public_sample(kind, shift, logscale, x, A,
                                                lam if learn else lam.clone(), warmup, eps, args)
    leaves = [shift, logscale, A] + ([lam] if learn else [])
    grads_t = torch.autograd.grad(loss_t, leaves)
    # ours
    from vsc.config import Config
    prior = ("thresholded_" if threshold else "") + kind
    our_est = our_est or Config(prior=prior, estimator={"subg": "subgradient"}.get(estimator, estimator)).sampler_estimator
    our_method = {"iwae": "softmin"}.get(method, method)
    w = warmup if kind == "laplacian" else 1.0
    lam_ours = (lam if learn else lam_value) if threshold else 0.0
    z_o, kl_o = vsc_kernels.threshold_sample(
        shift, logscale, lam_ours, num_samples=J, base=base, estimator=our_est, warmup=w,
        return_kl=True, prior_scale=0.1, generator=torch.Generator().manual_seed(seed),
        backend="reference")
    res = vsc_kernels.linear_elbo(x, z_o, A, kl_o, beta=0.01, method=our_method, recon="mean",
                                  backend="reference")
    grads_o = torch.autograd.grad(res.loss, leaves)
    if our_est == "straight_shift":   # the paper's eq. (4) differs from the public code here
        z_p, kl_p = vsc_kernels.threshold_sample(
            shift, logscale, lam_ours, num_samples=J, base=base, estimator="straight", warmup=w,
            return_kl=True, prior_scale=0.1, generator=torch.Generator().manual_seed(seed),
            backend="reference")
        gp = torch.autograd.grad(vsc_kernels.linear_elbo(x, z_p, A, kl_p, beta=0.01,
                                 method=our_method, recon="mean", backend="reference").loss, shift)[0]
        print(f"   (eq. 4 'straight' instead: rel grad shift err {(gp - grads_t[0]).abs().max().item() / grads_t[0].abs().max().item():.1e})")
    if our_method == "softmin":
        r2 = vsc_kernels.linear_elbo(x, z_o, A, kl_o, beta=0.01, method="iwae", recon="mean", backend="reference")
        print(f"   (Burda 'iwae' instead: |dloss| {abs(r2.loss.item() - loss_t.item()):.1e})")
    dz = (z_t - z_o).abs().max().item()
    dl = abs(loss_t.item() - res.loss.item())
    dg = [(a - b).abs().max().item() / max(b.abs().max().item(), 1e-300)
          for a, b in zip(grads_t, grads_o)]
    print(f"{name:42s} |dz|={dz:.1e} |dloss|={dl:.1e} rel grad err (shift, logscale, A"
          f"{', lam' if learn else ''}) = {', '.join(f'{e:.1e}' for e in dg)}")
    OUT[name] = {"loss": loss_t.item(), "grad_shift": grads_t[0].tolist(),
                 "grad_logscale": grads_t[1].tolist(), "grad_A_row0": grads_t[2][0].tolist()}
    if learn:
        OUT[name]["grad_lam_row0"] = grads_t[3][0].tolist()
    return dz, dl, dg


print("== sample_laplacian / sample_gaussian + compute_loss vs threshold_sample + linear_elbo")
for method in ("max", "avg", "iwae"):
    case(f"thresholded_laplacian_straight_{method}", "laplacian", True, "straight", method)
case("laplacian_straight_max", "laplacian", False, "straight", "max", our_est="straight")
case("thresholded_laplacian_learned_lam_max", "laplacian", True, "straight", "max", learn=True)
case("thresholded_laplacian_learned_lam_iwae", "laplacian", True, "straight", "iwae", learn=True)
case("thresholded_gaussian_straight_max", "gaussian", True, "straight", "max")
case("thresholded_gaussian_straight_iwae", "gaussian", True, "straight", "iwae")
case("gaussian_max", "gaussian", False, "straight", "max", our_est="straight")
case("thresholded_gaussian_subgradient_max", "gaussian", True, "subg", "max")
try:
    case("thresholded_laplacian_subgradient_max (public bug)", "laplacian", True, "subg", "max")
except Exception as e:
    print("laplacian subgradient:", e)

print("== the public Laplacian subgradient = ours with logb -> 2 logb and no warm-up")
g = torch.Generator().manual_seed(1234)
B, J, d = 3, 4, 6
shift = 0.3 * torch.randn(B, d, generator=g)
logscale = math.log(0.4) + 0.3 * torch.randn(B, d, generator=g)
eps = our_noise("laplace", B, J, d, 7)
args = SimpleNamespace(num_samples=J, threshold=True, theshold_learn=False, estimator="subg",
                       prior_method="fixed", prior_distribution="laplacian", spread_prior=0.1,
                       kl_weight=0.01, sample_method="max")
x = torch.randn(B, 9, generator=g); A = torch.randn(9, d, generator=g)
*_, z_t, _ = public_sample("laplacian", shift, logscale, x, A, torch.full((B, J, d), 0.25), 0.3,
                           eps, args)
z_bug = vsc_kernels.threshold_sample(shift, 2 * logscale, 0.25, num_samples=J, warmup=1.0,
                                     generator=torch.Generator().manual_seed(7),
                                     backend="reference")
z_ok = vsc_kernels.threshold_sample(shift, logscale, 0.25, num_samples=J, warmup=0.3,
                                    generator=torch.Generator().manual_seed(7),
                                    backend="reference")
print(f"  public subgradient z vs ours(2 logb, w=1): {(z_t - z_bug).abs().max().item():.1e}; "
      f"vs ours(logb, w=0.3): {(z_t - z_ok).abs().max().item():.2f}")

print("== compute_loss('iwae') vs _elbo.select_samples('softmin') on a (B, J) matrix")
L = softmin_matrix().requires_grad_()
recon = L.detach().clone().requires_grad_()
weight, loss_t = R.compute_loss(torch.zeros(4, 5, 2), recon, torch.zeros(4, 5), None, "iwae")
grad_t, = torch.autograd.grad(loss_t, recon)
from vsc_kernels import _elbo
row, idx, weights = _elbo.select_samples(L.detach(), "softmin")
print(f"  loss {abs(loss_t.item() - row.mean().item()):.1e}, d loss/dL vs weights/B "
      f"{(grad_t - weights / 4).abs().max().item():.1e}")
OUT["softmin_loss"] = loss_t.item()
OUT["softmin_grad"] = grad_t.tolist()

print("== FISTA (utils/solvers.py) vs vsc_kernels.fista from A^T x")
x, A = fista_problem()
L_exact = float(np.linalg.norm(A.numpy(), ord=2) ** 2)
for iters in (1, 7, 60):
    theirs = FISTA(A.numpy(), x.T.numpy(), tau=0.4, max_iter=iters, tol=0.0).T
    ours = vsc_kernels.fista(x, A, 0.4, max_iter=iters, tol=0.0, init=x @ A,
                             lipschitz=L_exact, backend="reference").codes
    print(f"  {iters:3d} iterations: max |diff| = {np.abs(theirs - ours.numpy()).max():.1e}")
theirs = FISTA(A.numpy(), x.T.numpy(), tau=0.4).T     # their defaults: 500 it, tol 1e-3 (batch)
ours = vsc_kernels.fista(x, A, 0.4, tol=1e-3, init=x @ A, lipschitz=L_exact,
                         backend="reference").codes
obj = lambda z: (0.5 * ((x.numpy() - z @ A.numpy().T) ** 2).sum(1) + 0.4 * np.abs(z).sum(1)).mean()
print(f"  default stopping (theirs: batch tol 1e-3; ours: per-row tol 1e-3): objective "
      f"{obj(theirs):.6f} vs {obj(ours.numpy()):.6f}")
OUT["fista_7_iterations"] = FISTA(A.numpy(), x.T.numpy(), tau=0.4, max_iter=7, tol=0.0).T.tolist()

print("== CycleScheduler(warmup_proportion=0.05, momentum=None) vs vsc.conventions")
from vsc import conventions
p = torch.nn.Parameter(torch.zeros(1))
opt = torch.optim.SGD([p], lr=0.01, momentum=0.9, nesterov=True)
N = 400
sched = CycleScheduler(opt, 0.01, n_iter=N, momentum=None, warmup_proportion=0.05)
lrs, moms = [], []
for _ in range(N):
    lrs.append(opt.param_groups[0]["lr"]); moms.append(opt.param_groups[0]["momentum"])
    sched.step()
p2 = torch.nn.Parameter(torch.zeros(1))
opt2 = torch.optim.SGD([p2], lr=0.01, momentum=0.9, nesterov=True)
ours_s = conventions.encoder_scheduler(opt2, "public_code", 0.01, N)
ours_lrs = []
for _ in range(N):
    ours_lrs.append(opt2.param_groups[0]["lr"]); opt2.step(); ours_s.step()
print(f"  max |lr diff| over {N} steps = {max(abs(a - b) for a, b in zip(lrs, ours_lrs)):.1e}; "
      f"momentum always {set(moms)}")
OUT["cycle_lrs_400"] = [lrs[i] for i in (0, 1, 2, 19, 20, 21, 100, 399)]

print("== the Laplacian warm-up of train_vsc_dict.py (its loop lines, run as written)")
src = (PUBLIC / "train_vsc_dict.py").read_text()
start = src.index("            if solver_args.prior_distribution == \"concreteslab\" or solver_args.prior_distribution == \"laplacian\":")
end = src.index("encoder.warmup = 1.0", start) + len("encoder.warmup = 1.0")
block = "\n".join(line[12:] for line in src[start:end].splitlines())
encoder = SimpleNamespace(warmup=0.1)
ns = {"solver_args": SimpleNamespace(prior_distribution="laplacian"), "encoder": encoder,
      "train_patches": np.zeros((80000, 1)), "train_args": SimpleNamespace(batch_size=100)}
used = []
for step in range(6200):
    j, i = divmod(step, 800)
    used.append(encoder.warmup)           # the forward of step `step` uses this value
    ns.update(j=j, i=i)
    exec(block, ns)
from vsc.priors.base import linear_warmup
ours_w = [linear_warmup(t, 0.1, 2e-4, 1500) for t in range(6200)]
print(f"  max |w diff| over 6200 steps = {max(abs(a - b) for a, b in zip(used, ours_w)):.1e}; "
      f"w(1500)={used[1500]}, w(1501)={used[1501]:.6f}, reaches 1 at step "
      f"{next(t for t, v in enumerate(used) if v >= 1.0)}")
OUT["warmup"] = {t: used[t] for t in (0, 1499, 1500, 1501, 1502, 3000, 5999, 6000, 6001)}

print("== dictionary step of train_vsc_dict.py vs vsc.train.elbo_loss's gradient of A")
from vsc.train import elbo_loss
src_step = [l.strip() for l in src.splitlines() if l.strip().startswith(("generated_patch =", "residual =", "step = ((residual"))]
print("   their lines:", src_step)
x, A, z, kl = dictionary_problem()
Bb, Jj = z.shape[:2]
for method in ("max", "avg", "iwae"):
    recon_t = ((x[:, None, :] - z @ A.T) ** 2).mean(-1)
    weight, _ = R.compute_loss(z, recon_t, 0.01 * kl[:, None].expand(Bb, Jj), None, method)
    ns = {"dict_cu": A, "b": z.permute(1, 2, 0), "patches_cu": x, "weight": weight.detach(),
          "train_args": SimpleNamespace(batch_size=Bb)}
    for line in src_step:
        exec(line, ns)
    their_step = ns["step"]          # A += lr * (step - 2 kappa A): step = -dLoss/dA
    A_leaf = A.clone().requires_grad_()
    loss, _ = elbo_loss(x, z, kl, A_leaf, beta=0.01, method={"iwae": "softmin"}.get(method, method),
                        recon="mean")
    ours, = torch.autograd.grad(loss, A_leaf)
    print(f"  {method:5s}: max |their step + our grad| = {(their_step + ours).abs().max().item():.1e}")
    OUT[f"dict_step_{method}_row0"] = their_step[0].tolist()

print("== sample_concreteslab vs vsc.priors.SpikeSlab(public_code=True)")
from vsc.priors.spike_slab import SpikeSlab
x, A, shift, logscale, h, eps, eta = spike_slab_problem()
B, J, d = eps.shape
leaves = [t.clone().requires_grad_() for t in (shift, logscale, h, A)]
w, tau = 0.37, 0.8
args = SimpleNamespace(num_samples=J, threshold=False, prior_method="fixed",
                       prior_distribution="concreteslab", spread_prior=0.1, kl_weight=0.01,
                       sample_method="max", estimator="straight")
orig_rand, orig_randn = torch.rand_like, torch.randn_like
torch.rand_like, torch.randn_like = (lambda t: eta.clone()), (lambda t: eps.clone())
try:
    mu_l, ls_l, h_l, A_l = leaves
    loss_t, _, _, z_t, _ = R.sample_concreteslab(mu_l, ls_l, -torch.relu(-h_l), x, A_l,
                                                 SimpleNamespace(warmup=w), args, tau, 0.1)
    grads_t = torch.autograd.grad(loss_t, leaves)
    prior = SpikeSlab(d, spike_prior=0.1, prior_scale=0.1, public_code=True)
    step = 1500 + round((w - 0.1) / 2e-4)          # the step at which the warm-up is w
    prior.temperature = lambda step: tau
    leaves2 = [t.clone().requires_grad_() for t in (shift, logscale, h, A)]
    sample = prior.sample({"mu": leaves2[0], "logvar": leaves2[1], "log_gamma": leaves2[2]}, J, step)
finally:
    torch.rand_like, torch.randn_like = orig_rand, orig_randn
res = vsc_kernels.linear_elbo(x, sample.z, leaves2[3], sample.kl, beta=0.01, method="max",
                              recon="mean", backend="reference")
grads_o = torch.autograd.grad(res.loss, leaves2)
print(f"  warm-up {prior.warmup(step):.4f}; |dz| = {(z_t - sample.z).abs().max().item():.1e}, "
      f"|dloss| = {abs(loss_t.item() - res.loss.item()):.1e}, rel grad err (mu, logvar, head, A) = "
      + ", ".join(f"{(a - b).abs().max().item() / max(b.abs().max().item(), 1e-300):.1e} (max {b.abs().max().item():.1e})" for a, b in zip(grads_t, grads_o)))
OUT["spike_slab"] = {"loss": loss_t.item(), "grad_mu": grads_t[0].tolist(), "grad_head": grads_t[2].tolist()}

Path(__file__).with_name("public_code_reference.json").write_text(json.dumps(OUT, indent=1) + "\n")
