"""No host synchronisation in the default path of the ops (issue 11), checked on CPU.

A TorchDispatchMode records every ATen op that reads a tensor's value back to the host
(``_local_scalar_dense``, behind ``.item()``, ``bool()``, ``float()``...) or whose output
size depends on the data (``nonzero`` and friends): on CUDA each is a device
synchronisation, which also forbids capturing a training step in a CUDA graph. The C++
kernels read their CPU inputs directly and show up here only through ATen ops, so this
test sees what the Python layers and the kernels' ATen calls would do on a GPU.
``sparse_decode``'s count of non-zeros (read once per sparse product, in
``vsc_kernels.sparse_decode._count_if_sparse``) is the one documented exception; the
other ops' eager paths run outside ``torch.library`` custom ops, so every ATen op they
issue is seen here.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import vsc_kernels

from _utils import require_backend

# Ops that read a value back to the host, or whose output shape depends on the data.
SYNC_OPS = {
    "_local_scalar_dense", "item", "is_nonzero", "equal", "allclose", "nonzero",
    "masked_select", "unique", "_unique", "_unique2", "unique_consecutive",
    "unique_dim", "repeat_interleave", "bincount", "histc", "_assert_async",
}


class SyncCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.syncs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNC_OPS:
            self.syncs.append(str(func))
        if name in ("index", "index_put", "index_put_") and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool
                for i in (args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ())):
            self.syncs.append(f"{func} (boolean mask)")
        return func(*args, **(kwargs or {}))


@pytest.fixture(autouse=True)
def _cpp_backend():
    require_backend("cpp")


def test_threshold_sample_forward_backward_does_not_synchronise():
    mu = torch.randn(6, 16, requires_grad=True)
    logb = (0.3 * torch.randn(6, 16)).requires_grad_()
    lam = torch.full((6, 3, 16), 0.3).requires_grad_()       # learned per-sample threshold
    with SyncCounter() as mode:
        for estimator in ("straight", "subgradient", "straight_shift"):
            z, kl = vsc_kernels.threshold_sample(mu, logb, lam, num_samples=3, return_kl=True,
                                                 estimator=estimator)
            ((z * z).sum() + kl.sum()).backward()
        vsc_kernels.threshold_sample(mu, logb, 0.25, num_samples=3).sum().backward()
    assert mode.syncs == []


@pytest.mark.parametrize("method", ["max", "avg", "iwae"])
def test_linear_elbo_and_elbo_select_do_not_synchronise(method):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 12, generator=g)
    z = torch.randn(5, 3, 8, generator=g)
    z[z.abs() < 1] = 0.0                                      # sparse codes (C++ sparse path)
    z.requires_grad_()
    A = torch.randn(12, 8, generator=g, requires_grad=True)
    kl = torch.rand(5, 3, generator=g, requires_grad=True)
    x_hat = (x[:, None] + torch.randn(5, 3, 12, generator=g)).requires_grad_()
    with SyncCounter() as mode:
        vsc_kernels.linear_elbo(x, z, A, kl, method=method).loss.backward()
        vsc_kernels.linear_elbo(x, z, A, kl, method=method, recon="mean").loss.backward()
        vsc_kernels.elbo_select(x, x_hat, kl, method=method).loss.backward()
    assert mode.syncs == []


def test_the_counter_sees_a_synchronisation():
    """The check can fail: the reference backend's lam check reads the tensor back."""
    mu, logb = torch.zeros(2, 4), torch.zeros(2, 4)
    with SyncCounter() as mode:
        vsc_kernels.threshold_sample(mu, logb, torch.full((4,), 0.1), backend="reference")
        bool(mu.sum() > 0)
    assert len(mode.syncs) >= 2


@pytest.mark.parametrize("sampling", ["max", "avg"])
def test_the_linear_generator_training_step_does_not_synchronise(tmp_path, sampling):
    """vsc.train.Trainer.train_step as the loop calls it: the loss (encoder, prior sample
    via threshold_sample, linear_elbo, Frobenius penalty), its backward, the guarded
    optimizer steps, the scheduler, and the step's loss / % non-zero / objective (10) /
    health, which stay on the device until the loop reads them (every check_every steps,
    in one transfer)."""
    from vsc.config import build_config
    from vsc.train import Trainer

    config = build_config(dict(n_train=200, n_val=100, batch_size=50, epochs=1, num_samples=4,
                               cache_dir=str(tmp_path / "patches"), sampling=sampling,
                               prior="thresholded_laplacian", learn_threshold=True))
    trainer = Trainer(config, tmp_path / "run", progress=False)
    for step in range(3):
        x = trainer.train_x[50 * step:50 * (step + 1)]
        with SyncCounter() as mode:
            trainer.train_step(x)
        assert mode.syncs == [], mode.syncs
    trainer.read_monitor()
    assert trainer.accumulator["batches"] == 3
    assert trainer.accumulator["loss"] != 0.0 and trainer.accumulator["objective"] > 0.0
