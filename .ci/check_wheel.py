"""Run from outside the source tree against an installed (non-editable) wheel: the
C++ sources came with the wheel, the C++ backend builds from them and runs, and its
result matches the reference (issue 10, item 5: a wheel once lost its kernels and
silently fell back to the reference)."""

import sys
import warnings
from pathlib import Path

warnings.simplefilter("error", RuntimeWarning)  # the "C++ backend unavailable" fallback

import torch  # noqa: E402

import vsc_kernels  # noqa: E402
from vsc_kernels import _dispatch, _extension  # noqa: E402

package = Path(vsc_kernels.__file__).resolve().parent
assert "site-packages" in package.parts, f"not an installed package: {package}"
assert _extension.CSRC_DIR == package / "csrc", _extension.CSRC_DIR
assert _extension.load_extension() is not None
assert _dispatch.resolve_backend(None, "cpu") == "cpp"
mu, logb = torch.randn(8, 32), torch.randn(8, 32) - 1
outputs = {}
for backend in ("cpp", "reference"):
    torch.manual_seed(0)
    outputs[backend] = vsc_kernels.threshold_sample(mu, logb, 0.3, num_samples=4,
                                                    backend=backend)
torch.testing.assert_close(outputs["cpp"], outputs["reference"], rtol=1e-5, atol=1e-5)
print(f"wheel check: vsc_kernels from {package}, C++ backend built in "
      f"{_extension.build_directory()} and agrees with the reference", file=sys.stderr)
