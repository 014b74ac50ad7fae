"""Property-based tests (hypothesis): every op, each kernel backend against the
reference on random shapes, memory layouts (transposed, strided, offset, expanded
views), dtypes, ``lam`` layouts and ``num_samples``; random override strings for the
config parser and the CLI (only the documented exceptions, never a traceback).

Shapes stay small (the Triton kernels run in the interpreter on CPU) and the example
counts low; the "ci" profile (tests/conftest.py) is derandomized, so a run is
reproducible. ``HYPOTHESIS_PROFILE=explore`` runs many more random examples.
"""

import dataclasses
import math
import string
import tempfile

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import vsc_kernels
from vsc.cli import main
from vsc.config import Config, build_config
from vsc.overrides import ConfigError

from _utils import DTYPE_TOLERANCES, KERNEL_BACKENDS, require_backend, seeded

TOLERANCE = {dtype: (atol, rtol) for dtype, atol, rtol in DTYPE_TOLERANCES}
DTYPES = st.sampled_from([torch.float32, torch.float16, torch.bfloat16])
# Examples per backend: the Triton interpreter is ~100x slower than the C++ kernels.
EXAMPLES = {"cpp": 50, "triton": 15}


def examples(backend, scale=1.0):
    """Settings with the backend's example count (times the profile's max_examples / 100:
    the "explore" profile runs 10x more)."""
    factor = settings.default.max_examples / 100
    return settings(max_examples=max(2, round(EXAMPLES[backend] * scale * factor)),
                    deadline=None)


# --------------------------------------------------------------------------------------
# Inputs: values from a seeded generator, laid out in memory as hypothesis says
# --------------------------------------------------------------------------------------

LAYOUTS = ("contiguous", "transposed", "strided", "offset")


def laid_out(values: torch.Tensor, layout: str) -> torch.Tensor:
    """``values`` (same shape, dtype, numbers) in another memory layout."""
    if layout == "transposed" and values.dim() >= 2:
        return values.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "strided":  # every other element of a wider buffer
        wide = torch.zeros(*values.shape[:-1], 2 * values.shape[-1], dtype=values.dtype)
        wide[..., ::2] = values
        return wide[..., ::2]
    if layout == "offset":  # a view that starts 3 elements into its storage
        flat = torch.zeros(values.numel() + 3, dtype=values.dtype)
        flat[3:] = values.reshape(-1)
        return flat[3:].view(values.shape)
    return values.contiguous()


def randn(seed: int, *shape, scale=1.0, shift=0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift


def close(actual, expected, dtype, what, factor=1.0):
    """Within ``dtype``'s tolerance, relative to the larger of 1 and max |expected|."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    atol, rtol = TOLERANCE[dtype]
    scale = max(1.0, expected.detach().abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual.detach().double(), expected.detach().double(),
                               atol=factor * atol * scale, rtol=factor * rtol,
                               msg=lambda m: f"{what}: {m}")


# --------------------------------------------------------------------------------------
# threshold_sample
# --------------------------------------------------------------------------------------

@st.composite
def threshold_cases(draw):
    lead = draw(st.sampled_from([(1,), (3,), (6,), (2, 3)]))
    d = draw(st.integers(1, 17))
    J = draw(st.sampled_from([None, 1, 2, 5]))
    lam_kind = draw(st.sampled_from(["float", "zero", "feature", "row", "sample",
                                     "feature_expanded"]))
    return dict(
        lead=lead, d=d, J=J, lam_kind=lam_kind,
        dtype=draw(DTYPES), lam_dtype=draw(st.sampled_from(["float32", "same"])),
        layouts=(draw(st.sampled_from(LAYOUTS)), draw(st.sampled_from(LAYOUTS))),
        base=draw(st.sampled_from(["laplace", "gaussian"])),
        estimator=draw(st.sampled_from(["straight", "subgradient", "straight_shift"])),
        warmup=draw(st.floats(0.0, 1.5)), prior_scale=draw(st.floats(0.05, 2.0)),
        lam_value=draw(st.floats(0.0, 1.5)), return_kl=draw(st.booleans()),
        mu_scale=draw(st.sampled_from([1e-3, 1.0, 30.0])),
        logb_shift=draw(st.sampled_from([-6.0, -0.5, 3.0])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _threshold_lam(case, out_shape):
    lead, d, J, kind = case["lead"], case["d"], case["J"], case["lam_kind"]
    if kind == "float":
        return case["lam_value"]
    if kind == "zero":
        return 0.0
    dtype = torch.float32 if case["lam_dtype"] == "float32" else case["dtype"]
    g = torch.Generator().manual_seed(case["seed"] + 1)
    sample_axis = () if J is None else (J,)
    shape = {"feature": (d,), "feature_expanded": (d,),
             "row": (*lead, *((1,) if J is not None else ()), 1),
             "sample": (*lead, *sample_axis, d)}[kind]
    lam = (case["lam_value"] * torch.rand(*shape, generator=g)).to(dtype)
    if kind == "feature_expanded":  # a stride-0 view of the full output shape
        lam = lam.expand(out_shape)
    return lam


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_threshold_sample_matches_reference(backend):
    device = require_backend(backend)

    @examples(backend)
    @given(threshold_cases())
    def check(case):
        lead, d, J, dtype = case["lead"], case["d"], case["J"], case["dtype"]
        mu = randn(case["seed"], *lead, d, scale=case["mu_scale"]).to(dtype)
        logb = randn(case["seed"] + 2, *lead, d, scale=0.5, shift=case["logb_shift"]).to(dtype)
        out_shape = (*lead, *(() if J is None else (J,)), d)
        lam = _threshold_lam(case, out_shape)
        lam = lam.to(device) if isinstance(lam, torch.Tensor) else lam
        kwargs = dict(num_samples=J, base=case["base"], estimator=case["estimator"],
                      warmup=case["warmup"], prior_scale=case["prior_scale"],
                      return_kl=case["return_kl"])
        grads = dtype == torch.float32
        results = {}
        for name in (backend, "reference"):
            leaves = [laid_out(t, layout).to(device) for t, layout in zip((mu, logb),
                                                                          case["layouts"])]
            lam_leaf = lam.detach().clone() if isinstance(lam, torch.Tensor) else lam
            if grads:
                leaves = [t.requires_grad_() for t in leaves]
                if isinstance(lam_leaf, torch.Tensor) and lam_leaf.dtype == torch.float32:
                    lam_leaf = lam_leaf.requires_grad_()
            out = seeded(case["seed"] % 1000, name, *leaves, lam_leaf, **kwargs)
            z, kl = out if case["return_kl"] else (out, None)
            got = {"z": z, "kl": kl}
            if grads:
                w = randn(7, *z.shape).to(z)
                loss = (z * w).sum() + (kl * randn(8, *kl.shape).to(kl)).sum() if kl is not None \
                    else (z * w).sum()
                loss.backward()
                got.update(grad_mu=leaves[0].grad, grad_logb=leaves[1].grad,
                           grad_lam=lam_leaf.grad if isinstance(lam_leaf, torch.Tensor) else None)
            results[name] = got
        ours, ref = results[backend], results["reference"]
        assert ours["z"].shape == out_shape and ours["z"].dtype == dtype
        # Same noise, float32 threshold decisions: exactly the same zeros.
        assert torch.equal(ours["z"] == 0, ref["z"] == 0), "zero pattern"
        close(ours["z"], ref["z"], dtype, "z")
        if case["return_kl"]:
            close(ours["kl"], ref["kl"], dtype, "kl", factor=d)
        for key in ("grad_mu", "grad_logb", "grad_lam"):
            if ref.get(key) is not None:
                close(ours[key], ref[key], dtype, key, factor=max(1, J or 1))

    check()


# --------------------------------------------------------------------------------------
# linear_elbo and elbo_select
# --------------------------------------------------------------------------------------

@st.composite
def elbo_cases(draw, image_like=False):
    B = draw(st.integers(1, 6))
    J = draw(st.integers(1, 4))
    trailing = (draw(st.sampled_from([(), (1,), (7,), (2, 5), (3, 2, 2)])) if image_like
                else None)
    return dict(
        B=B, J=J, d=draw(st.integers(1, 12)), D=draw(st.integers(1, 12)), trailing=trailing,
        kl_kind=draw(st.sampled_from([None, "row", "sample"])),
        method=draw(st.sampled_from(["max", "avg", "iwae"])),
        recon=draw(st.sampled_from(["sum", "mean"])),
        beta=draw(st.floats(0.0, 2.0)), dtype=draw(DTYPES),
        density=draw(st.sampled_from([0.0, 0.3, 1.0])),
        layouts=tuple(draw(st.sampled_from(LAYOUTS)) for _ in range(3)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _kl(case):
    B, J, seed = case["B"], case["J"], case["seed"]
    g = torch.Generator().manual_seed(seed + 3)
    return {None: None, "row": torch.rand(B, generator=g),
            "sample": torch.rand(B, J, generator=g)}[case["kl_kind"]]


def _selection_is_clear(per_sample: torch.Tensor, dtype) -> bool:
    """For "max": the best sample wins by more than the rounding of the dtype (a near
    tie may select either sample, legitimately, on two summation orders)."""
    if per_sample.shape[1] < 2:
        return True
    top2 = per_sample.double().topk(2, dim=1, largest=False).values
    gap = (top2[:, 1] - top2[:, 0]).abs()
    atol, rtol = TOLERANCE[dtype]
    return bool((gap > 4 * (atol + rtol * top2[:, 0].abs())).all())


def _compare_elbo(op, backend, device, case, tensors):
    """``op(*tensors)`` with the tensors laid out as ``case["layouts"]`` (the last one,
    ``kl``, contiguous) on both backends: outputs and (float32) gradients agree."""
    dtype = case["dtype"]
    grads = dtype == torch.float32
    results = {}
    for name in (backend, "reference"):
        layouts = (*case["layouts"][:len(tensors) - 1], "contiguous")
        leaves = [None if t is None else laid_out(t, layout).to(device)
                  for t, layout in zip(tensors, layouts)]
        if grads:
            leaves = [None if t is None else t.requires_grad_() for t in leaves]
        result = op(*leaves, beta=case["beta"], method=case["method"], recon=case["recon"],
                    backend=name)
        if grads:
            (1.3 * result.loss).backward()
        results[name] = (result, [None if t is None else t.grad for t in leaves])
    (ours, our_grads), (ref, ref_grads) = results[backend], results["reference"]
    if case["method"] == "max":
        assume(_selection_is_clear(ref.per_sample, dtype))
        assert torch.equal(ours.index, ref.index), "index"
    close(ours.per_sample, ref.per_sample, dtype, "per_sample")
    close(ours.loss, ref.loss, dtype, "loss")
    close(ours.weights, ref.weights, dtype, "weights")
    for name, got, want in zip(("x", "second", "third", "kl"), our_grads, ref_grads):
        if want is not None:
            close(got, want, dtype, f"grad {name}", factor=4)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_linear_elbo_matches_reference(backend):
    device = require_backend(backend)

    @examples(backend)
    @given(elbo_cases())
    def check(case):
        B, J, d, D, dtype, seed = (case[k] for k in ("B", "J", "d", "D", "dtype", "seed"))
        g = torch.Generator().manual_seed(seed)
        x = (0.5 * torch.randn(B, D, generator=g)).to(dtype)
        z = (torch.randn(B, J, d, generator=g)
             * (torch.rand(B, J, d, generator=g) < case["density"])).to(dtype)
        A = (torch.randn(D, d, generator=g) * (0.3 / d ** 0.5)).to(dtype)
        kl = _kl(case)
        _compare_elbo(vsc_kernels.linear_elbo, backend, device, case,
                      (x, z, A, None if kl is None else kl.to(dtype)))

    check()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_elbo_select_matches_reference(backend):
    device = require_backend(backend)

    @examples(backend)
    @given(elbo_cases(image_like=True))
    def check(case):
        B, J, dtype, seed, trailing = (case[k] for k in ("B", "J", "dtype", "seed", "trailing"))
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(B, *trailing, generator=g)
        x_hat = x[:, None] + 0.5 * torch.randn(B, J, *trailing, generator=g)
        kl = _kl(case)
        _compare_elbo(vsc_kernels.elbo_select, backend, device, case,
                      (x.to(dtype), x_hat.to(dtype), None if kl is None else kl.to(dtype)))

    check()


# --------------------------------------------------------------------------------------
# sparse_decode
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_sparse_decode_matches_reference(backend):
    device = require_backend(backend)

    @examples(backend)
    @given(lead=st.sampled_from([(1,), (5,), (2, 3), (0,)]), d=st.integers(1, 20),
           D=st.integers(1, 12), density=st.sampled_from([0.0, 0.05, 0.3, 1.0]),
           dense_above=st.sampled_from([None, 0.0, 1.0]), dtype=DTYPES,
           layouts=st.tuples(st.sampled_from(LAYOUTS), st.sampled_from(LAYOUTS)),
           seed=st.integers(0, 2**31 - 1))
    def check(lead, d, D, density, dense_above, dtype, layouts, seed):
        g = torch.Generator().manual_seed(seed)
        z = (torch.randn(*lead, d, generator=g)
             * (torch.rand(*lead, d, generator=g) < density)).to(dtype)
        A = torch.randn(D, d, generator=g).to(dtype)
        grads = dtype == torch.float32
        results = {}
        for name in (backend, "reference"):
            zl, Al = (laid_out(t.clone(), layout).to(device) for t, layout in zip((z, A), layouts))
            if grads:
                zl.requires_grad_(), Al.requires_grad_()
            out = vsc_kernels.sparse_decode(zl, Al, dense_above=dense_above, backend=name)
            if grads:
                (out * randn(5, *out.shape).to(out)).sum().backward()
            results[name] = (out, zl.grad, Al.grad)
        (ours, gz, gA), (ref, rz, rA) = results[backend], results["reference"]
        close(ours, ref, dtype, "z @ A.T", factor=max(1.0, math.sqrt(d)))
        if grads:
            close(gz, rz, dtype, "grad z", factor=max(1.0, math.sqrt(D)))
            close(gA, rA, dtype, "grad A", factor=max(1.0, math.sqrt(z.numel() / d + 1)))

    check()


# --------------------------------------------------------------------------------------
# fista
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_fista_matches_reference(backend):
    device = require_backend(backend)

    @examples(backend, scale=0.6)
    @given(B=st.integers(0, 6), D=st.integers(1, 12), d=st.integers(1, 16),
           lam_kind=st.sampled_from(["float", "row"]), lam=st.floats(0.0, 1.0),
           nonneg=st.booleans(), warm=st.booleans(), dtype=DTYPES,
           layouts=st.tuples(st.sampled_from(LAYOUTS), st.sampled_from(LAYOUTS)),
           seed=st.integers(0, 2**31 - 1))
    def check(B, D, d, lam_kind, lam, nonneg, warm, dtype, layouts, seed):
        g = torch.Generator().manual_seed(seed)
        A = torch.randn(D, d, generator=g)
        A = (A / A.norm(dim=0).clamp(min=1e-3)).to(dtype)
        x = torch.randn(B, D, generator=g).to(dtype)
        lam_arg = lam if lam_kind == "float" else (lam * torch.rand(B, generator=g)).to(device)
        init = (0.1 * torch.randn(B, d, generator=g)).to(dtype).to(device) if warm else None
        kwargs = dict(max_iter=60, tol=1e-4, nonneg=nonneg, init=init)
        out = {name: vsc_kernels.fista(laid_out(x, layouts[0]).to(device),
                                       laid_out(A, layouts[1]).to(device), lam_arg,
                                       backend=name, **kwargs)
               for name in (backend, "reference")}
        ours, ref = out[backend], out["reference"]
        assert ours.codes.shape == (B, d) and ours.codes.dtype == dtype
        if nonneg:
            assert (ours.codes >= 0).all()
        # A row whose stopping test sits on the boundary may stop one iteration apart.
        assert (ours.n_iter - ref.n_iter).abs().max().item() <= 1 if B else True
        same = ours.n_iter == ref.n_iter
        assert torch.equal(ours.converged[same], ref.converged[same])
        close(ours.codes[same], ref.codes[same], dtype, "codes", factor=20)

    check()


# --------------------------------------------------------------------------------------
# The config parser and the CLI: random override strings
# --------------------------------------------------------------------------------------

KEYS = sorted(f.name for f in dataclasses.fields(Config)) + ["quick", "full"]
VALUE_TEXT = st.one_of(
    st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True).map(repr),
    st.sampled_from(["true", "false", "nan", "inf", "-inf", "none", "null", "[1, 2]",
                     "{a = 1}", '"max"', "'cpu'", "1979-05-27", "0x1F", "1_000", "1e400",
                     "", " ", "=", "==3", "\n", "1\nseed = 2", '"unterminated', "[", "}",
                     "cuda:99", "2.5", "-0.0", "1e-3", "\x00", "é"]),
    st.text(string.printable, max_size=12),
    st.text(max_size=8),
)
OVERRIDE = st.one_of(
    st.tuples(st.sampled_from(KEYS), VALUE_TEXT).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.tuples(st.text(string.ascii_lowercase + "_", min_size=0, max_size=10), VALUE_TEXT)
      .map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.text(max_size=20),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(OVERRIDE, max_size=4))
def test_override_strings_give_a_config_or_a_config_error(overrides):
    try:
        config = build_config({"quick": True}, overrides)
    except ConfigError as error:
        assert error.lines and all(line.startswith("config: ") and "\n" not in line
                                   for line in error.lines), error.lines
        return
    assert isinstance(config, Config)
    assert isinstance(config.epochs, int) and not isinstance(config.epochs, bool)
    assert all(math.isfinite(getattr(config, name)) for name in ("beta", "lr_encoder",
                                                                  "fista_lambda"))


@settings(max_examples=60, deadline=None)
@given(st.lists(OVERRIDE, max_size=3))
def test_the_cli_never_prints_a_traceback_for_bad_overrides(overrides):
    with pytest.MonkeyPatch.context() as patch, tempfile.TemporaryDirectory() as folder:
        import vsc.train

        patch.setattr(vsc.train, "train", lambda *args, **kwargs: {"trained": True})
        try:
            code = main(["train", "quick", *overrides, "--out", f"{folder}/run",
                         "--no-progress"])
        except SystemExit as exit_:  # argparse: an override that looks like an option
            assert exit_.code == 2
            return
        assert code in (0, 2)
