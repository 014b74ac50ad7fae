"""vsc.step_monitor.StepMonitor on its own: the freeze at the first unhealthy step, by
found_inf for fused optimizers (the trainer's) and by copies for the others, and the
one case the two differ in, an update that overflows."""

import pytest
import torch

from vsc.step_monitor import StepMonitor


def _setup(fused: bool, lr: float = 0.1):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                                fused=True if fused else None)
    return model, optimizer, StepMonitor(torch.device("cpu"))


def _step(model, optimizer, monitor, x, poison=None, scale=1.0):
    optimizer.zero_grad()
    loss = model(x).square().mean() * scale
    loss.backward()
    if poison == "gradient":
        model[0].weight.grad[0, 0] = float("nan")
    elif poison == "loss":
        loss = loss * float("inf")
    monitor.update(loss, [optimizer], nonzero=torch.tensor(0.0))


def _state(model, optimizer):
    return ([p.detach().clone() for p in model.parameters()]
            + [optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()])


@pytest.mark.parametrize("poison", ["loss", "gradient"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
def test_the_first_unhealthy_step_freezes_parameters_and_momentum(fused, poison):
    model, optimizer, monitor = _setup(fused)
    x = torch.randn(32, 8)
    for _ in range(2):
        _step(model, optimizer, monitor, x)
    healthy = _state(model, optimizer)
    _step(model, optimizer, monitor, x, poison=poison)
    for _ in range(3):   # healthy again, but after the first unhealthy step
        _step(model, optimizer, monitor, x)
    for got, want in zip(_state(model, optimizer), healthy):
        assert torch.equal(got, want)
    reading = monitor.read()
    assert reading.bad_step == 2
    assert reading.bad_what.startswith("the loss is" if poison == "loss" else "a gradient")
    assert optimizer.__dict__.get("found_inf") is None   # not left set on the optimizer


def test_fused_and_plain_optimizers_take_the_same_healthy_steps():
    states = []
    for fused in (True, False):
        model, optimizer, monitor = _setup(fused)
        x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
        for _ in range(5):
            _step(model, optimizer, monitor, x)
        assert monitor.read().bad_step is None
        states.append(_state(model, optimizer))
    for a, b in zip(*states):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
def test_an_overflowing_update_is_named_and_only_the_plain_optimizer_undoes_it(fused):
    """Finite loss and gradients, a learning rate that sends the parameters past the
    float32 range: both name the step as an overflow; the fused optimizer's update cannot
    be taken back (no copies), the plain one's is."""
    model, optimizer, monitor = _setup(fused)
    x = torch.randn(32, 8)
    _step(model, optimizer, monitor, x)
    before = [p.detach().clone() for p in model.parameters()]
    for group in optimizer.param_groups:
        group["lr"] = 1e38
    _step(model, optimizer, monitor, x, scale=1e6)
    reading = monitor.read()
    assert reading.bad_step == 1 and reading.bad_what == "an update overflowed the parameters"
    finite = all(torch.isfinite(p).all() for p in model.parameters())
    assert finite != fused
    if not fused:
        assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
