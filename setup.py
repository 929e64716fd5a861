"""The tunnel's hot path, compiled with mypyc where this machine can build it (pyproject.toml has
the rest of the project's metadata).

``shared/mux.py``, ``shared/muxframe.py`` and ``shared/wsframe.py`` run once per message through
the tunnel; compiled, they cost about a sixth less user-space CPU (docs/tunnel.md). So do the
broker's end of a channel (``broker/tunnel/target.py``), PostgreSQL's statement tap
(``broker/wire/pgtap.py``) and the statement log's event-loop side (``broker/audit/turn.py``).
They are plain, strictly typed Python too, and that is what runs when
compiling is not possible:

* ``ACCESS_PURE_PYTHON=1`` asks for no compiling;
* editable installs (``pip install -e``) never compile, so edits to the sources take effect;
* no mypyc, no C compiler or no Python headers: the build says so and installs pure Python.

``access --version`` says which one is installed.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
# The modules that run once per message, as installed (access/ links to the source folders).
HOT_MODULES = (
    "access/shared/mux.py",
    "access/shared/muxframe.py",
    "access/shared/wsframe.py",
    "access/broker/wire/pgtap.py",
    "access/broker/tunnel/target.py",
    "access/broker/audit/turn.py",
)


def _warn(message: str) -> None:
    print(f"access-jit: {message}; the tunnel runs as pure Python", file=sys.stderr)


def _c_compiler_problem() -> str | None:
    """Why this machine cannot build a Python extension, or None: a tiny C file that includes
    Python.h is compiled first (a fraction of a second), before mypyc spends half a minute
    translating the modules for a compiler that is not there."""
    import sysconfig
    import tempfile

    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.errors import CCompilerError, DistutilsError
    from setuptools._distutils.sysconfig import customize_compiler

    compiler = new_compiler()
    customize_compiler(compiler)
    with tempfile.TemporaryDirectory() as scratch:
        probe = Path(scratch) / "probe.c"
        probe.write_text("#include <Python.h>\nint access_probe(void) { return 0; }\n")
        try:
            compiler.compile(
                [str(probe)], output_dir=scratch, include_dirs=[sysconfig.get_paths()["include"]]
            )
        except (CCompilerError, DistutilsError, OSError) as exc:
            return f"no working C compiler with Python's headers ({exc})"
    return None


def _compiled_extensions() -> list[Any]:
    if os.environ.get("ACCESS_PURE_PYTHON"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        _warn("mypyc is not available")
        return []
    problem = _c_compiler_problem()
    if problem is not None:
        _warn(problem)
        return []
    # mypyc names modules after their paths: access/shared links to shared/, the installed layout.
    # Its C sources (and, beside them, setuptools' object files) go under build/, where every
    # build from a source tree leaves its files anyway: a temporary folder elsewhere made the
    # objects land in a stray tmp/ folder of the checkout (setuptools joins the relative path
    # to its own build folder).
    build = HERE / "build" / "mypyc"
    shutil.rmtree(build, ignore_errors=True)  # no C of an earlier build is reused
    cwd = Path.cwd()
    try:
        os.chdir(HERE)
        return list(
            mypycify(
                # The build environment has none of our dependencies (websockets' C masking
                # function among them): mypyc treats them as untyped, as at runtime.
                # No config file: pyproject.toml's [tool.mypy] names the pydantic plugin, which the
                # isolated build environment does not have.
                [
                    "--config-file=",
                    # mypy's cache with the rest of the build, not a .mypy_cache left in the checkout.
                    f"--cache-dir={os.path.relpath(build / 'mypy-cache', HERE)}",
                    "--ignore-missing-imports",
                    *HOT_MODULES,
                ],
                opt_level="3",
                group_name="access.shared._speedups",
                # setuptools refuses absolute source paths: name the build folder relative to here.
                target_dir=os.path.relpath(build, HERE),
            )
        )
    except (Exception, SystemExit) as exc:  # mypyc exits on type errors; any failure: pure Python
        _warn(f"mypyc could not compile the tunnel ({exc})")
        return []
    finally:
        os.chdir(cwd)


class OptionalBuildExt(build_ext):
    """Build the compiled modules if the machine can; otherwise leave none behind."""

    def run(self) -> None:
        if getattr(self, "editable_mode", False) or self.inplace:
            self.extensions = []
            return
        try:
            super().run()
        except Exception as exc:  # a compiler error of any kind means pure Python
            _warn(f"the C compiler failed ({exc})")
            # A compiled module without its shared library would not import: drop them all.
            for ext in self.extensions:
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            self.extensions = []

    def get_outputs(self) -> list[str]:
        return [path for path in super().get_outputs() if Path(path).exists()]


setup(ext_modules=_compiled_extensions(), cmdclass={"build_ext": OptionalBuildExt})
