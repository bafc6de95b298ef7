"""Build codec._mulaw from codec/_mulaw.pyx, optionally.

The compiled codec is an optional extension: where Cython or a C compiler is
missing, or the build fails, the install still succeeds and ``codec`` falls
back to its pure-Python/NumPy implementation (it says so loudly here, and
``speakr-bridge doctor`` reports which implementation is active).
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

_BANNER = "*" * 75


class OptionalBuildExt(build_ext):
    """build_ext that turns a failed compile into a warning, not an error."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure means "use the fallback"
            self._warn(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)

    @staticmethod
    def _warn(exc: BaseException) -> None:
        print(
            f"\n{_BANNER}\nWARNING: the compiled codec (codec._mulaw) could not be built:\n  {exc!r}\n"
            "speakr-bridge will use the pure-Python/NumPy codec (same output, slower).\n"
            f"Install a C compiler and Cython >= 3, then reinstall, to get the fast one.\n{_BANNER}\n",
            file=sys.stderr,
        )


def _extensions() -> list[Extension]:
    if os.environ.get("SPEAKR_BRIDGE_NO_EXTENSION") == "1":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        OptionalBuildExt._warn(ImportError("Cython >= 3 is not installed"))
        return []
    compile_args = ["-O3", "-funroll-loops"] if os.name != "nt" else ["/O2"]
    ext = Extension(
        "codec._mulaw",
        sources=["codec/_mulaw.pyx"],
        depends=["codec/_kernels.h"],
        include_dirs=["codec"],
        extra_compile_args=compile_args,
    )
    return cythonize([ext], language_level=3, quiet=True)


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
