"""torch.compile(fullgraph=True), autocast and the training-loop integration."""

import pytest
import torch

import vsc_kernels

from _utils import require_backend

BACKENDS = ["reference", "cpp", "triton"]


def _device(backend):
    return torch.device("cpu") if backend == "reference" else require_backend(backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    device = _device(backend)
    if backend == "triton" and device.type == "cpu":
        pytest.skip("inductor cannot trace the interpreter-run Triton op on CPU tensors")
    torch._dynamo.reset()

    def step(mu, logb, lam):
        z, kl = vsc_kernels.threshold_sample(mu, logb, lam, num_samples=3, return_kl=True,
                                             backend=backend, prior_scale=0.5)
        return (z * z).sum() + 0.1 * kl.sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    mu = torch.randn(5, 16, device=device, requires_grad=True)
    logb = torch.zeros(5, 16, device=device, requires_grad=True)
    lam = torch.full((16,), 0.3, device=device, requires_grad=True)
    torch.manual_seed(0)
    loss = compiled(mu, logb, lam)
    loss.backward()
    grads = [t.grad.clone() for t in (mu, logb, lam)]
    for t in (mu, logb, lam):
        t.grad = None
    torch.manual_seed(0)
    step(mu, logb, lam).backward()
    for got, t in zip(grads, (mu, logb, lam)):
        torch.testing.assert_close(got, t.grad)
    # A second call draws new noise inside the compiled graph.
    assert not torch.equal(compiled(mu, logb, lam), compiled(mu, logb, lam))


def test_torch_compile_inductor_cpp():
    require_backend("cpp")
    torch._dynamo.reset()

    @torch.compile(fullgraph=True)
    def sample(mu, logb):
        return vsc_kernels.threshold_sample(torch.tanh(mu), logb, 0.2, num_samples=2) * 2.0

    mu = torch.randn(4, 8, requires_grad=True)
    out = sample(mu, torch.zeros(4, 8))
    assert out.shape == (4, 2, 8)
    out.sum().backward()
    assert mu.grad is not None and torch.isfinite(mu.grad).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_bf16_training_step(backend):
    device = _device(backend)
    encoder = torch.nn.Linear(32, 2 * 16).to(device)
    decoder = torch.nn.Linear(16, 32).to(device)
    x = torch.randn(8, 32, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        mu, logb = encoder(x).chunk(2, dim=-1)
        assert mu.dtype == torch.bfloat16
        z = vsc_kernels.threshold_sample(mu, logb, 0.1, num_samples=4, backend=backend)
        assert z.dtype == torch.bfloat16 and z.shape == (8, 4, 16)
        loss = ((decoder(z) - x[:, None, :]) ** 2).mean()
    loss.backward()
    for p in encoder.parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32
        assert torch.isfinite(p.grad).all()
