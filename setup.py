"""Packaging hook (everything else is in pyproject.toml): the C++ sources in the
repository's top-level csrc/ go into the wheel as vsc_kernels/csrc/, from where
vsc_kernels._extension builds them on first use (torch.utils.cpp_extension, cached
per source hash, torch version and Python ABI). Building at first use rather than at
install time keeps the build free of torch: pip's isolated build environment would
otherwise fetch a torch of its own (a CUDA build of GBs) to compile against."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CSRC = Path(__file__).resolve().parent / "csrc"


class BuildPyWithCsrc(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's csrc/ directly
        target = Path(self.build_lib) / "vsc_kernels" / "csrc"
        self.mkpath(str(target))
        for source in sorted(CSRC.iterdir()):
            if source.suffix in (".cpp", ".h"):
                self.copy_file(str(source), str(target / source.name))


setup(cmdclass={"build_py": BuildPyWithCsrc})
