"""Sessions: tests (default), lint, typecheck, docs, bench. Run `nox -l` to list them."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

PACKAGES = ["-p", "access.cli", "-p", "access.broker", "-p", "access.shared"]


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """The whole suite: unit tests and end-to-end tests (real broker, real CLI, real clients).

    Against the package as users install it: the tunnel's hot path compiled where possible
    (setup.py); ``ACCESS_PURE_PYTHON=1 nox -s tests`` runs it as pure Python.
    """
    session.install(".[test]")
    session.run("pytest", "-n", "3", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """mypy --strict on access.cli, access.broker and access.shared (access/ links to the sources)."""
    session.install("-e", ".[dev]")
    session.run("mypy", *PACKAGES)


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """Regenerate docs/cli-reference.md from --help, then check the docs cover every command and setting."""
    session.install("-e", ".[test]")
    session.run("python", "docs/generate.py")
    session.run("pytest", "tests/test_docs.py")


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Direct vs ssh -L vs access connect, side by side (benchmarks/results.json); then the
    broker's memory under the attacks of docs/tunnel.md#memory (benchmarks/memory.py); then
    kubectl's latency direct and through access (benchmarks/kube.py, docs/kubernetes.md); then a
    revoke's cut across replicas, NOTIFY vs the poll (benchmarks/replicas.py, docs/broker.md); then
    a thousand tunnel connections with grant requests beside them (benchmarks/connections.py); then
    the CLI's start-up beside `python -c pass` (benchmarks/cli.py, docs/cli.md); then grant
    issuance beside a bare FastAPI route (benchmarks/grants.py, docs/performance.md); then the
    ledger's verify and searches on a million entries (benchmarks/ledger.py, docs/audit.md)."""
    session.install(".[test]")
    session.run("python", "benchmarks/run.py", *session.posargs)
    session.run("python", "benchmarks/memory.py")
    session.run("python", "benchmarks/kube.py")
    session.run("python", "benchmarks/replicas.py")
    session.run("python", "benchmarks/connections.py")
    session.run("python", "benchmarks/cli.py")
    session.run("python", "benchmarks/grants.py")
    session.run("python", "benchmarks/ledger.py")
