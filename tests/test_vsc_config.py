"""Run configuration (vsc.config) and the CLI's config handling: every shipped config
is valid, overrides parse with TOML syntax, bad configs fail at start with a clear
message."""

import tomllib

import pytest

from vsc.cli import main, resolve_config_path, shipped_configs
from vsc.config import QUICK, Config, load_config
from vsc.priors import make_prior

TABLE1_ROWS = ["fista"] + [f"{row}_J{J}" for J in (1, 20) for row in (
    "gaussian", "laplacian", "spike_slab", "thresholded_gaussian", "thresholded_gaussian_gamma",
    "thresholded_laplacian", "thresholded_laplacian_gamma")]


def test_every_table1_row_is_shipped_and_valid():
    shipped = shipped_configs()
    for row in TABLE1_ROWS:
        config = load_config(shipped[f"table1/{row}"])
        assert config.name == row
        if row != "fista":
            assert config.num_samples == (20 if row.endswith("J20") else 1)
            assert config.learn_threshold == ("gamma" in row)
    assert load_config(shipped["table1/thresholded_laplacian_J1"]).threshold == 0.25
    assert load_config(shipped["table1/thresholded_gaussian_J20"]).threshold == 0.52
    assert load_config(shipped["table1/fista"]).frobenius_weight == 1e-3
    assert load_config(shipped["table1/gaussian_J1"]).frobenius_weight == 1e-4


def test_overrides_use_toml_syntax_and_win_over_quick():
    config = load_config(resolve_config_path("quick"), ["seed=1337", "beta=1e-3",
                                                        'sampling="avg"', "epochs=3"])
    assert (config.seed, config.beta, config.sampling, config.epochs) == (1337, 1e-3, "avg", 3)
    assert config.n_train == QUICK["n_train"]
    full = load_config(resolve_config_path("quick"), ["full=true"])
    assert full.n_train == Config().n_train == 80000 and full.epochs == 300


@pytest.mark.parametrize("override,message", [
    ('prior="cauchy"', "prior=\"cauchy\": expected one of 'gaussian'"),
    ("fista_lambda=-1.0", "fista_lambda must be >= 0"),
    ("threshold=-0.2", "threshold"),
    ("num_samples=0", "num_samples must be >= 1"),
    ('sampling="best"', "sampling=\"best\": expected one of 'max', 'avg', 'iwae'"),
    ("learning_rate=0.1", "unknown key"),
    ('convention="code"', "convention=\"code\": expected one of 'public_code'"),
])
def test_bad_configs_fail_with_a_clear_message(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(resolve_config_path("quick"), [override])


def test_missing_files_fail_clearly(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="neither a file nor a shipped config"):
        resolve_config_path(str(tmp_path / "nope.toml"))
    assert main(["train", str(tmp_path / "nope.toml")]) == 2
    assert "error" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('prior = "thresholded_laplacian"\ndata = "%s"\n' % (tmp_path / "IMAGES.mat"))
    assert main(["train", str(bad), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "IMAGES.mat" in capsys.readouterr().err
    broken = tmp_path / "broken.toml"
    broken.write_text("prior = \n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(broken)


def test_shipped_configs_follow_the_public_code_and_the_quick_job_is_the_papers_method():
    shipped = shipped_configs()
    linear = [name for name, path in shipped.items()
              if tomllib.loads(path.read_text()).get("generator", "linear") == "linear"]
    assert "quick" in linear and "table1/fista" in linear
    for name in linear:
        assert load_config(shipped[name]).convention == "public_code", name
    quick = load_config(shipped["quick"])
    assert (quick.method, quick.prior, quick.num_samples, quick.sampling) == (
        "variational", "thresholded_laplacian", 20, "max")
    assert quick.sampler_estimator == "straight_shift" and quick.elbo_method == "max"
    # the quick schedule's scale warm-up ends within the first quarter of the run
    steps = quick.epochs * -(-quick.n_train // quick.batch_size)
    prior = make_prior(quick.prior, quick.latent_dim, **quick.prior_options())
    assert prior.warmup(steps // 4) == 1.0 > prior.warmup(0)
    rows = {(c.estimator, c.num_samples) for c in
            (load_config(shipped[f"table2/thresholded_laplacian_{e}_J{J}"])
             for e in ("ST", "SG") for J in (1, 20))}
    assert rows == {("straight", 1), ("straight", 20), ("subgradient", 1), ("subgradient", 20)}
    fig18 = [load_config(shipped[f"figure18/thresholded_laplacian_J100_{s}"])
             for s in ("max", "avg", "iwae")]
    assert [c.elbo_method for c in fig18] == ["max", "avg", "softmin"]
    assert {c.num_samples for c in fig18} == {100}


def test_the_convention_resolves_estimator_sampling_and_objective():
    public = Config(prior="thresholded_gaussian", sampling="iwae")
    paper = Config(prior="thresholded_gaussian", sampling="iwae", convention="paper_equations")
    assert (public.sampler_estimator, public.elbo_method, public.objective_weight) == (
        "straight_shift", "softmin", 0.5)
    assert (paper.sampler_estimator, paper.elbo_method, paper.objective_weight) == (
        "straight", "iwae", 1.0)
    assert Config(prior="laplacian").sampler_estimator == "straight"   # no threshold to shift
    assert Config(estimator="subgradient").sampler_estimator == "subgradient"
    assert (public.fista_tolerance, paper.fista_tolerance) == (1e-3, 1e-4)
    with pytest.raises(ValueError, match="convention='folklore': expected one of 'public_code'"):
        Config(convention="folklore")
