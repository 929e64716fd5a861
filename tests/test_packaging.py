"""Installing the project puts only ``access/`` into site-packages: no generic ``cli`` or ``shared``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_has_one_top_level_namespace(tmp_path: Path) -> None:
    # Build from a copy: setuptools writes build/ next to the sources, and a stale build/ in the
    # working tree could put deleted modules back into the wheel.
    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".git", ".venv", ".nox", "build", "*.egg-info", "__pycache__"),
    )
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
    )
    (wheel,) = tmp_path.glob("access_jit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"access"}, f"unexpected top-level entries in the wheel: {sorted(top)}"
    for expected in (
        "access/cli/main.py",
        "access/broker/app.py",
        "access/shared/models.py",
        "access/broker/migrations/versions/0001_initial_schema.py",
        "access/broker/migrations/script.py.mako",
    ):
        assert expected in names
    assert any(name.startswith("access/broker/templates/") and name.endswith(".html") for name in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "access = access.cli.main:main" in text
    assert "access-broker = access.broker.admin:main" in text


def test_source_folders_do_not_leak_as_top_level_modules() -> None:
    code = (
        "import importlib.util, sys;"
        "sys.exit(any(importlib.util.find_spec(m) for m in ('cli', 'shared', 'broker')))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, timeout=60)
    assert result.returncode == 0, (
        "a generic top-level module (cli/shared/broker) is importable after install"
    )
