"""DNN generator (vsc.dnn): the threshold from a target % non-zero, the networks of
Tables 4/5, batch norm that records and replays statistics, the selected-sample decode
against decoding every sample, every prior end to end on the embedded digits, AMP steps,
a killed run resumed to the uninterrupted run's exact state, and bad input."""

import copy
import json
import math

import pytest
import torch

import vsc_kernels
from vsc import runs
from vsc.cli import main, resolve_config_path, shipped_configs
from vsc.config import build_config, load_config
from vsc.dnn.batch_norm import BatchNorm2d, recording, replaying
from vsc.dnn.config import DnnConfig, threshold_for_percent
from vsc.dnn.models import Decoder, Encoder, architecture_for
from vsc.dnn.objective import SparseAutoencoder
from vsc.dnn.train import CHECKPOINT, DnnTrainer, cycle_lr_factor
from vsc.priors import make_prior

SMALL = dict(generator="dnn", data="digits", n_train=128, n_val=48, batch_size=32, epochs=2,
             latent_dim=16, num_samples=3, lr=3e-3, fid=False, eval_batch_size=48,
             device="cpu")


def small_config(**values) -> DnnConfig:
    return build_config({**SMALL, **values})


# -- threshold from % non-zero -------------------------------------------------------------

def test_threshold_from_percent_is_the_priors_tail_mass():
    # Appendix D's values: 0.52 (Gaussian, variance 0.1) and the public code's 0.23
    # (Laplace, scale 0.1) at 10%; the public CelebA config's 0.405 is 20% Gaussian.
    assert threshold_for_percent(10, "gaussian", 0.1) == pytest.approx(0.5201, abs=1e-4)
    assert threshold_for_percent(20, "gaussian", 0.1) == pytest.approx(0.4053, abs=1e-4)
    assert threshold_for_percent(10, "laplace", 0.1) == pytest.approx(0.1 * math.log(10))
    assert threshold_for_percent(100, "laplace", 0.1) == 0.0
    assert threshold_for_percent(100, "gaussian", 0.1) == 0.0
    for pct in (1.0, 5.0, 37.5):
        lam = threshold_for_percent(pct, "laplace", 0.3)
        assert math.exp(-lam / 0.3) == pytest.approx(pct / 100)
        lam = threshold_for_percent(pct, "gaussian", 0.3)
        assert math.erfc(lam / math.sqrt(2 * 0.3)) == pytest.approx(pct / 100)
    # ... and the prior's samples are non-zero that often after thresholding.
    lam = threshold_for_percent(10, "gaussian", 0.1)
    z = vsc_kernels.threshold_sample(torch.zeros(2000, 64), torch.full((2000, 64), math.log(0.1)),
                                     lam, base="gaussian")
    assert (z != 0).double().mean().item() == pytest.approx(0.10, abs=0.005)
    for bad in ((0, "laplace", 0.1), (101, "gaussian", 0.1), (10, "gaussian", 0.0),
                (10, "cauchy", 0.1)):
        with pytest.raises(ValueError):
            threshold_for_percent(*bad)


def test_configs_take_the_threshold_from_pct_nonzero():
    assert small_config(prior="thresholded_laplacian", pct_nonzero=5).lam0 == pytest.approx(
        0.1 * math.log(20))
    assert small_config(prior="thresholded_gaussian", threshold=0.3).lam0 == 0.3
    assert small_config(prior="gaussian").lam0 is None
    options = small_config(prior="spike_slab", pct_nonzero=5).prior_options()
    assert options["spike_prior"] == pytest.approx(0.05)


# -- networks -------------------------------------------------------------------------------

@pytest.mark.parametrize("architecture,shape,sizes,dec_sizes", [
    ("fmnist", (1, 28, 28), [14, 7, 4, 1], [4, 7, 14, 28]),
    ("celeba", (3, 64, 64), [32, 16, 8, 4, 1], [4, 8, 16, 32, 64])])
def test_networks_follow_tables_4_and_5(architecture, shape, sizes, dec_sizes):
    encoder = Encoder(architecture, 24, ("mu", "logb", "log_alpha"))
    decoder = Decoder(architecture, 24)
    h = torch.rand(2, *shape)
    seen = []
    for layer in encoder.backbone:
        h = layer(h)
        if isinstance(layer, torch.nn.Conv2d):
            seen.append(h.shape[-1])
    assert seen == sizes and h.flatten(1).shape[1] == encoder.feature_dim
    assert set(encoder.heads) == {"mu", "logb", "log_alpha"}
    out = encoder(torch.rand(2, *shape))
    assert all(v.shape == (2, 24) for v in out.values())
    h = decoder.linear(torch.randn(2, 24)).reshape(-1, *decoder.input_shape)
    seen = []
    for layer in decoder.layers:
        h = layer(h)
        if isinstance(layer, torch.nn.ConvTranspose2d):
            seen.append(h.shape[-1])
    assert seen == dec_sizes and h.shape[1:] == shape
    x_hat = decoder(torch.randn(3, 5, 24))
    assert x_hat.shape == (3, 5, *shape) and 0 <= x_hat.min() and x_hat.max() <= 1


def test_architecture_follows_the_image_shape():
    assert architecture_for((1, 28, 28)) == "fmnist"
    assert architecture_for((3, 64, 64)) == "celeba"
    with pytest.raises(ValueError, match="takes images of shape"):
        architecture_for((1, 28, 28), "celeba")
    with pytest.raises(ValueError, match="no architecture"):
        architecture_for((3, 32, 32))


# -- batch norm and the selected-sample decode -------------------------------------------

def test_batch_norm_records_and_replays_statistics():
    torch.manual_seed(0)
    ours, native = BatchNorm2d(5), torch.nn.BatchNorm2d(5)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 2)
        ours.bias.normal_()
    native.load_state_dict(ours.state_dict())
    x = torch.randn(12, 5, 3, 3) * 3 + 1
    torch.testing.assert_close(ours(x), native(x))            # plain: nn.BatchNorm2d's
    with recording(ours):
        y = ours(x)
    torch.testing.assert_close(y, native(x))
    torch.testing.assert_close(ours.running_mean, native.running_mean)
    torch.testing.assert_close(ours.running_var, native.running_var)
    before = ours.running_mean.clone()
    part = x[:4].clone().requires_grad_()
    with replaying(ours):
        y_part = ours(part)                                   # the whole batch's statistics
    torch.testing.assert_close(y_part, y[:4])
    assert torch.equal(ours.running_mean, before)
    # ... and the gradient of batch norm over the replayed batch itself.
    weight = torch.randn_like(y_part)
    (y_part * weight).sum().backward()
    alone = copy.deepcopy(native).train()
    part_again = x[:4].clone().requires_grad_()
    (alone(part_again) * weight).sum().backward()
    torch.testing.assert_close(part.grad, part_again.grad)
    mean, var = ours.recorded      # the affine part sees the replayed normalized values
    normalized = (x[:4] - mean[:, None, None]) / torch.sqrt(var + ours.eps)[:, None, None]
    torch.testing.assert_close(ours.weight.grad, (weight * normalized).sum((0, 2, 3)))


def _step_gradient(model, x):
    torch.manual_seed(1)
    loss = model(x, 0).loss
    model.zero_grad()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("prior", ["thresholded_gaussian"])
def test_selected_decode_keeps_the_values_of_decoding_every_sample(prior):
    """decode="selected" gives the loss, selection and running statistics of
    decode="all"; with J = 1 (every sample selected) the same gradient; with J > 1 a
    gradient close to it in which the directions batch norm cancels (the bias of a
    convolution before it) get none, as in "all"."""
    torch.manual_seed(0)
    options = {"threshold": 0.52} if prior != "spike_slab" else {"warmup_start": 1.0}
    for J in (1, 5):
        model = SparseAutoencoder("fmnist", 16, make_prior(prior, 16, **options),
                                  num_samples=J, beta=1e-2, decode="all").double()
        x = torch.rand(6, 1, 28, 28, dtype=torch.float64)
        every, selected = copy.deepcopy(model), copy.deepcopy(model)
        selected.decode = "selected"
        loss_all, grad_all = _step_gradient(every, x)
        loss_sel, grad_sel = _step_gradient(selected, x)
        torch.testing.assert_close(loss_sel, loss_all)
        for a, b in zip(every.decoder.modules(), selected.decoder.modules()):
            if isinstance(a, torch.nn.BatchNorm2d):
                torch.testing.assert_close(a.running_var, b.running_var)
        flat_all = torch.cat([g.flatten() for g in grad_all.values()])
        flat_sel = torch.cat([g.flatten() for g in grad_sel.values()])
        if J == 1:
            torch.testing.assert_close(flat_sel, flat_all)
            continue
        assert not torch.allclose(flat_sel, flat_all)
        assert torch.nn.functional.cosine_similarity(flat_sel, flat_all, dim=0) > 0.9
        for name in ("decoder.layers.1.bias", "decoder.layers.4.bias"):
            assert grad_all[name].abs().max() < 1e-12 and grad_sel[name].abs().max() < 1e-12


def test_lr_schedule_warms_up_then_anneals():
    total = 1000
    factors = [cycle_lr_factor(t, total) for t in range(total + 1)]
    assert factors[0] == pytest.approx(1 / 25) and factors[50] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(factors[:51], factors[1:51]))
    assert all(a >= b for a, b in zip(factors[50:], factors[51:]))
    assert factors[-1] == pytest.approx(1 / 25e4)
    # Without a warm-up (fewer than 20 steps) the cosine starts at the peak.
    assert cycle_lr_factor(0, 10) == 1.0 and cycle_lr_factor(10, 10) == pytest.approx(1 / 25e4)


# -- end to end ---------------------------------------------------------------------------

def _fixed_point_loss(trainer, x):
    """The training loss at the schedules' last step on one batch with fixed noise, on a
    copy (batch norm's running statistics stay untouched)."""
    model = copy.deepcopy(trainer.model).train()
    torch.manual_seed(123)
    with torch.no_grad():
        return model(x, trainer.total_steps).loss.item()


PRIORS = [
    dict(prior="gaussian"),
    dict(prior="laplacian"),
    dict(prior="spike_slab"),
    dict(prior="thresholded_gaussian"),
    dict(prior="thresholded_gaussian", learn_threshold=True),
    dict(prior="thresholded_laplacian"),
    dict(prior="thresholded_laplacian", learn_threshold=True),
    dict(prior="thresholded_laplacian", sampling="avg"),
    dict(prior="thresholded_gaussian", sampling="iwae", estimator="straight_shift"),
    dict(prior="thresholded_laplacian", sampling="softmin", estimator="straight_shift"),
]


@pytest.mark.parametrize("values", PRIORS, ids=lambda v: "-".join(str(x) for x in v.values()))
def test_every_prior_trains_on_the_digits_and_writes_its_outputs(tmp_path, values):
    trainer = DnnTrainer(small_config(**values), tmp_path, progress=False)
    x = torch.stack([trainer.train_set[i][0] for i in range(32)])
    before = _fixed_point_loss(trainer, x)
    summary = trainer.fit()
    assert _fixed_point_loss(trainer, x) < before
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2]
    for name in ("config.json", CHECKPOINT, "summary.json", "reconstructions.png",
                 "dictionary.png", "point_biserial.png", "curves.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["prior"] == values["prior"] + ("_gamma" if values.get("learn_threshold") else "")
    for key in ("val_mse", "val_mse_mean_over_samples", "val_pct_nonzero", "multi_information"):
        assert math.isfinite(summary[key]) and summary[key] >= 0, key
    assert summary["n_val"] == 48 and summary["steps"] == 8
    if values["prior"].startswith("thresholded"):
        assert summary["val_pct_nonzero"] < 100.0
    assert set(summary["max_abs_point_biserial"]) == {f"digit_{k}" for k in range(10)}
    trainer.close()


@pytest.mark.parametrize("amp,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_amp_steps_run_the_fused_ops_inside_autocast(tmp_path, monkeypatch, amp, dtype):
    seen = []
    elbo_select = vsc_kernels.elbo_select

    def spy(x, x_hat, *args, **kwargs):
        seen.append(x_hat.dtype)
        return elbo_select(x, x_hat, *args, **kwargs)

    monkeypatch.setattr(vsc_kernels, "elbo_select", spy)
    reference = DnnTrainer(small_config(), tmp_path / "fp32", progress=False)
    trainer = DnnTrainer(small_config(amp=amp), tmp_path / amp, progress=False)
    assert trainer.scaler.is_enabled() == (amp == "fp16")
    x = torch.stack([trainer.train_set[i][0] for i in range(32)])
    params = [p.detach().clone() for p in trainer.model.parameters()]
    torch.manual_seed(5)
    ours = trainer.train_step(x)
    assert seen and all(d == dtype for d in seen)
    torch.manual_seed(5)
    full = reference.train_step(x)
    assert math.isfinite(ours["loss"])
    assert ours["loss"] == pytest.approx(full["loss"], rel=0.05)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    moved = [not torch.equal(a, b) for a, b in zip(params, trainer.model.parameters())]
    assert all(moved)


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_killed_run_resumes_to_the_uninterrupted_state_bit_for_bit(tmp_path):
    config = small_config(prior="thresholded_gaussian", learn_threshold=True)
    full = DnnTrainer(config, tmp_path / "full", progress=False)
    full.fit()
    run = tmp_path / "killed"
    first = DnnTrainer(config, run, progress=False)
    assert first.fit(stop_after_steps=3)["stopped_at_step"] == 3        # mid-epoch
    assert not (run / "summary.json").exists()
    second = DnnTrainer(config, run, progress=False)
    assert second.fit(resume=True, stop_after_steps=4)["stopped_at_step"] == 4  # epoch end
    third = DnnTrainer(config, run, progress=False)
    summary = third.fit(resume=True)
    assert _states_equal(third.model.state_dict(), full.model.state_dict())
    assert third.step == full.step == 8
    assert third.optimizer.state_dict()["state"].keys() == full.optimizer.state_dict()["state"].keys()
    for k, state in full.optimizer.state_dict()["state"].items():
        assert _states_equal(third.optimizer.state_dict()["state"][k], state)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(third.history) == strip(full.history)
    assert summary["val_mse"] == json.loads((tmp_path / "full" / "summary.json").read_text())["val_mse"]
    assert (run / runs.PREVIOUS).exists()   # the previous checkpoint is kept


# -- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize("override,message", [
    ('amp="fp8"', "amp=\"fp8\": expected one of 'off', 'bf16', 'fp16'"),
    ("batch_size=0", "batch_size must be >= 1"),
    ('batch_size="many"', "batch_size=\"many\": expected an integer"),
    ("pct_nonzero=0", "pct_nonzero must be in"),
    ('sampling="avg"', None),
    ('decode="selected"', None),
    ('prior="cauchy"', "prior=\"cauchy\": expected one of 'gaussian'"),
    ("learning_rate=0.1", "learning_rate=0.1: unknown key"),
    ('data=""', "data is empty"),
    ("threshold=-1.0", "threshold must be >= 0"),
    ('prior="gaussian"', None),
    ("lr=nan", "lr=nan: expected a finite number"),
])
def test_bad_dnn_configs_fail_with_a_clear_message(override, message):
    path = resolve_config_path("dnn/quick")
    if message is None:
        load_config(path, [override])   # fine on its own
        return
    with pytest.raises(ValueError, match=message):
        load_config(path, [override])


def test_conflicting_dnn_options_fail():
    with pytest.raises(ValueError, match="decode='selected' needs sampling='max'"):
        small_config(sampling="avg", decode="selected")
    with pytest.raises(ValueError, match="has no threshold"):
        small_config(prior="gaussian", learn_threshold=True)
    with pytest.raises(ValueError, match="spike_slab' has no threshold"):
        small_config(prior="spike_slab", threshold=0.3)
    with pytest.raises(ValueError, match="generator=.gan.: expected one of .linear., .dnn."):
        build_config({"generator": "gan"})


def test_every_shipped_dnn_config_is_valid():
    shipped = shipped_configs()
    names = [n for n in shipped if n.split("/")[0] in ("dnn", "fmnist", "celeba")]
    assert len(names) == 15
    for name in names:
        config = load_config(shipped[name], ["data=\"digits\""])
        assert isinstance(config, DnnConfig)
        if name.startswith("fmnist"):
            assert (config.num_samples, config.beta) == (20, 1e-2)
        if name.startswith("celeba"):
            assert (config.num_samples, config.beta) == (10, 1e-3)
        if name != "dnn/quick":
            assert (config.lr, config.adam_beta1, config.weight_decay, config.batch_size) == \
                (3e-4, 0.5, 1e-5, 512)
            assert config.learn_threshold == name.endswith("_gamma")
    with pytest.raises(ValueError, match="data is empty"):
        load_config(shipped["fmnist/thresholded_gaussian"])


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "dnn/quick", "lr=-1", "--out", out]) == 2
    assert main(["train", "dnn/quick", f"data=\"{tmp_path / 'missing'}\"", "--out", out,
                 "--no-progress"]) == 2
    assert main(["train", "fmnist/gaussian", "--out", out]) == 2
    assert main(["train", "dnn/quick", "batch_size=4096", "--out", out, "--no-progress"]) == 2
    assert main(["train", "dnn/quick", "--resume", "--out", out, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and all(line.startswith("vsc train: error:") for line in err)
    assert "lr must be" in err[0] and "missing" in err[1] and "data is empty" in err[2]
    assert "exceeds the 1497 training images" in err[3] and "nothing to resume" in err[4]


def test_resume_refuses_a_changed_config_and_a_run_refuses_an_existing_folder(tmp_path):
    config = small_config(epochs=1)
    DnnTrainer(config, tmp_path, progress=False).fit(stop_after_steps=1)
    with pytest.raises(FileExistsError, match="already holds a run"):
        DnnTrainer(config, tmp_path, progress=False).fit()
    with pytest.raises(ValueError, match=r"different config \(fields \['beta'\]\)"):
        DnnTrainer(small_config(epochs=1, beta=0.5), tmp_path, progress=False).fit(resume=True)


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    trainer = DnnTrainer(small_config(), tmp_path, progress=False)
    with torch.no_grad():
        trainer.model.encoder.heads["mu"].bias.fill_(float("nan"))
    x = torch.stack([trainer.train_set[i][0] for i in range(32)])
    with pytest.raises(FloatingPointError, match="loss is nan at step 0"):
        trainer.train_step(x)


def test_non_finite_gradient_stops_before_the_update(tmp_path):
    trainer = DnnTrainer(small_config(), tmp_path, progress=False)
    x = torch.stack([trainer.train_set[i][0] for i in range(32)])
    weight = next(trainer.model.decoder.parameters())
    weight.register_hook(lambda grad: grad * float("nan"))   # the loss stays finite
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.raises(FloatingPointError, match="gradient norm is nan at step 0"):
        trainer.train_step(x)
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))
    assert trainer.step == 0


def test_a_diverged_run_writes_diverged_json_and_exits_3(tmp_path, monkeypatch, capsys):
    """As the linear trainer: one line naming the step, diverged.json, exit status 3."""
    step = DnnTrainer.train_step

    def poisoned(self, x, flags=()):
        if self.step == 2:
            with torch.no_grad():
                self.model.encoder.heads["mu"].bias.fill_(float("nan"))
        return step(self, x, flags)

    monkeypatch.setattr(DnnTrainer, "train_step", poisoned)
    out = tmp_path / "run"
    overrides = [f"{key}={json.dumps(value)}" for key, value in SMALL.items()
                 if key not in ("generator",)]
    assert main(["train", "dnn/quick", *overrides, "--out", str(out), "--no-progress"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vsc train: diverged: loss is nan at step 2; the last checkpoint in {out} "
                   "is intact"]
    diverged = json.loads((out / "diverged.json").read_text())
    assert diverged["step"] == 2 and "loss is nan" in diverged["message"]


def test_sweep_prints_the_figure7_grid(capsys):
    assert main(["sweep", "fmnist/gaussian", "fmnist/thresholded_gaussian", "data=/data/fm",
                 "--latent-dims", "64,128", "--pct", "5,10", "--seeds", "0,1337"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    # the Gaussian (dense) runs once per dimension and seed; the thresholded one per %
    assert len(lines) == 2 * 2 + 2 * 2 * 2
    assert lines[0] == ("vsc train fmnist/gaussian data=/data/fm latent_dim=64 seed=0 --out "
                        "runs/sweep/fmnist_gaussian_d64_s0")
    assert ("vsc train fmnist/thresholded_gaussian data=/data/fm latent_dim=128 seed=1337 "
            "pct_nonzero=5 --out runs/sweep/fmnist_thresholded_gaussian_d128_p5_s1337") in lines
    assert main(["sweep", "fmnist/gaussian", "data=/x", "--nproc", "2", "--latent-dims",
                 "64"]) == 0
    assert capsys.readouterr().out.startswith("torchrun --standalone --nproc_per_node=2 -m vsc.cli")
    assert main(["sweep", "quick", "--latent-dims", "64"]) == 2
    assert main(["sweep", "fmnist/gaussian", "data=/x", "--latent-dims", "sixty"]) == 2


def test_figure7_draws_from_finished_runs(tmp_path, capsys):
    label = "FID (offline: test)"
    for prior, dim, pct, mse in [("gaussian", 64, None, 0.03), ("gaussian", 128, None, 0.028),
                                 ("thresholded_gaussian", 64, 10.0, 0.025),
                                 ("thresholded_gaussian", 128, 10.0, 0.022),
                                 ("thresholded_gaussian", 128, 5.0, 0.027)]:
        run = tmp_path / f"{prior}_{dim}_{pct}"
        run.mkdir()
        (run / "summary.json").write_text(json.dumps({
            "prior": prior, "latent_dim": dim, "pct_nonzero_target": pct, "val_mse": mse,
            "fid": 10 * mse, "fid_label": label, "val_pct_nonzero": pct or 100.0,
            "multi_information": dim / 10, "seed": 0, "dataset": "digits"}))
    runs_ = sorted(str(p) for p in tmp_path.iterdir())
    out = tmp_path / "figure7.png"
    assert main(["figure7", *runs_, "--out", str(out)]) == 0
    assert out.stat().st_size > 0 and "5 runs" in capsys.readouterr().out
    (tmp_path / "unfinished").mkdir()
    assert main(["figure7", *runs_, str(tmp_path / "unfinished")]) == 2
    assert "has not finished" in capsys.readouterr().err
