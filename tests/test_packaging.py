"""Installing the project puts only ``access/`` into site-packages: no generic ``cli`` or ``shared``;
the tunnel's hot path comes compiled (mypyc) or, asked for or unbuildable, as pure Python."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _build_wheel(tmp_path: Path, env: dict[str, str]) -> Path:
    # Build from a copy: setuptools writes build/ next to the sources, and a stale build/ in the
    # working tree could put deleted modules back into the wheel.
    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".nox", "build", "*.egg-info", "__pycache__", "*.so", "node_modules"
        ),
    )
    # The build runs without isolation (no downloads), in this environment, which has all of our
    # dependencies; the isolated one pip makes for users has none of them (only the build
    # requirements). Hide the ones mypy could reach through pyproject.toml (its pydantic plugin),
    # so the build sees what users' builds see.
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['pydantic'] = None\n")
    env = {"PYTHONPATH": str(hide), **env}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
        timeout=300,
        env={**os.environ, **env},
    )
    (wheel,) = tmp_path.glob("access_jit-*.whl")
    return wheel


class Built:
    """What a build put into site-packages: the wheel's names and files, or the same read from the
    installed distribution's RECORD (the wheel pip built from this tree when the suite was set up)."""

    def __init__(self, names: list[str], read: Callable[[str], bytes], root: Path | None) -> None:
        self.names = names
        self.read = read
        self.root = root  # where the package's files are importable from; None: already on sys.path


def _from_wheel(wheel: Path, tmp_path: Path) -> Built:
    archive = zipfile.ZipFile(wheel)
    unpacked = tmp_path / "unpacked"
    archive.extractall(unpacked)
    return Built(archive.namelist(), archive.read, unpacked)


def _installed_compiled_build() -> Built | None:
    """The installed distribution, when it is a compiled, non-editable install of this very tree
    (CI's: `pip install '.[test]'` in a fresh clone): building the same wheel again would only
    compile the same modules twice (80 s of the suite). Anything else: None, and the test builds."""
    # Site-packages only: a build leaves access_jit.egg-info in the tree, which is on sys.path.
    site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    found = list(importlib.metadata.distributions(name="access-jit", path=site))
    if len(found) != 1:
        return None
    dist = found[0]
    try:
        origin = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        return None
    if origin.get("dir_info", {}).get("editable") or origin.get("url") != ROOT.as_uri():
        return None
    names = [str(f) for f in dist.files or [] if not str(f).startswith("..")]
    if not any(name.endswith(".so") for name in names):
        return None

    def read(name: str) -> bytes:
        return Path(str(dist.locate_file(name))).read_bytes()

    return Built(names, read, None)


BUILDS = {
    "compiled": {},
    "pure": {"ACCESS_PURE_PYTHON": "1"},
    "no-compiler": {"CC": "false"},  # a machine without a working C compiler
}


@pytest.mark.parametrize("build", sorted(BUILDS))
def test_wheel_has_one_top_level_namespace(tmp_path: Path, build: str) -> None:
    built = _installed_compiled_build() if build == "compiled" else None
    wheel_name = None
    if built is None:
        wheel = _build_wheel(tmp_path, BUILDS[build])
        built, wheel_name = _from_wheel(wheel, tmp_path), wheel.name
    names = built.names
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"access"}, f"unexpected top-level entries in the wheel: {sorted(top)}"
    for expected in (
        "access/cli/main.py",
        "access/broker/app.py",
        "access/shared/models.py",
        "access/shared/mux.py",
        "access/broker/store/migrations/versions/0001_initial_schema.py",
        "access/broker/store/migrations/script.py.mako",
    ):
        assert expected in names
    assert any(name.startswith("access/broker/web/templates/") and name.endswith(".html") for name in names)
    # Every source package lands without being listed anywhere (packages.find through access/).
    for init in sorted(ROOT.glob("*/**/__init__.py")):
        relative = init.relative_to(ROOT)
        if relative.parts[0] in {"cli", "broker", "shared"}:
            assert f"access/{relative.as_posix()}" in names, f"{relative.parent} is missing from the wheel"
    # `pip install access-jit` is the CLI alone: the broker's server stack comes with [broker].
    metadata = built.read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    plain = {
        line.split()[1].split("[")[0].split(">")[0].lower() for line in requires if "extra ==" not in line
    }
    assert plain.isdisjoint({"fastapi", "uvicorn", "sqlalchemy", "psycopg", "argon2-cffi", "alembic"}), plain
    assert any("fastapi" in line and 'extra == "broker"' in line for line in requires), requires
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = built.read(entry_points).decode()
    assert "access = access.cli.main:main" in text
    assert "access-broker = access.broker.admin:main" in text
    # The tunnel's hot path: compiled by mypyc (this machine has a C compiler), or not at all.
    compiled = sorted(name.split("/")[-1].split(".")[0] for name in names if name.endswith(".so"))
    if build != "compiled":
        assert compiled == []
        assert build != "pure" or str(wheel_name).endswith("-py3-none-any.whl")
        return
    assert compiled == ["_speedups__mypyc", "mux", "muxframe", "pgtap", "target", "turn", "wsframe"]
    shared = {
        "access/shared/",
        "access/broker/wire/pgtap.",
        "access/broker/tunnel/target.",
        "access/broker/audit/turn.",
    }
    assert all(name.startswith(tuple(shared)) for name in names if name.endswith(".so"))
    # The compiled modules import and frame bytes (and tap statements) as the sources do.
    code = (
        "import access.shared.mux as mux, access.shared.wsframe as ws; "
        "assert not mux.__file__.endswith('.py'), mux.__file__; "
        "frame = ws.masked_frame(b'hello'); "
        "assert ws.FrameParser(expect_masked=True).feed(frame) == [(ws.OP_BINARY, b'hello')]; "
        "import access.broker.wire.pgtap as pgtap, access.broker.tunnel.target as target; "
        "assert not pgtap.__file__.endswith('.py') and not target.__file__.endswith('.py'); "
        "tap = pgtap.PostgresTap(); tap.feed(b'Q\\0\\0\\0\\x0dselect 1\\0'); "
        "assert [(s.kind, s.text) for s in tap.take()] == [('query', 'select 1')]; "
        "import access.broker.audit.turn as turn, access.broker.wire.base as base, json; "
        "assert not turn.__file__.endswith('.py'), turn.__file__; "
        "side = turn.AddSide(10, 10_000); "
        "assert side.add('c', 'g', 's', 'a', [base.Statement('query', 'select \"1\"\\n', 'p')]); "
        "line = side.journal_text(side.take(), 7); "
        "want = ['S', 'c', 'g', 's', 'a', 0, 7, [['query', 'select \"1\"\\n', 'p']]]; "
        "assert json.loads(line) == want, line; "
        "print('ok')"
    )
    where = {} if built.root is None else {"PYTHONPATH": str(built.root)}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=built.root or tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **where},
    )
    assert result.stdout.strip() == "ok", result.stderr


def test_source_folders_do_not_leak_as_top_level_modules() -> None:
    code = (
        "import importlib.util, sys;"
        "sys.exit(any(importlib.util.find_spec(m) for m in ('cli', 'shared', 'broker')))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, timeout=60)
    assert result.returncode == 0, (
        "a generic top-level module (cli/shared/broker) is importable after install"
    )


# A CLI-only install (`pip install access-jit`) lacks the broker's modules; sys.modules[name] = None
# makes an import of that name fail as it would there.
_WITHOUT_FASTAPI = "import sys; sys.modules['fastapi'] = None; sys.argv = ['{prog}', *{args!r}]; "


@pytest.mark.parametrize(
    ("prog", "args", "entry"),
    [
        ("access-broker", ["users", "list"], "from access.broker.admin import main; main()"),
        ("access", ["demo"], "from access.cli.main import main; main()"),
    ],
)
def test_without_the_broker_extra_commands_say_what_to_install(
    prog: str, args: list[str], entry: str
) -> None:
    code = _WITHOUT_FASTAPI.format(prog=prog, args=args) + entry
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "fastapi" in result.stderr
    assert "pip install 'access-jit[broker]'" in result.stderr
    assert "Traceback" not in result.stderr
