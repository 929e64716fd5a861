"""kubectl through the broker (issue 11), end to end: the real broker process, the real CLI, the real
kubectl 1.32, and the Kubernetes API stand-in (tests/fakes/kubeapi.py) as the cluster.

The stand-in refuses any request without the broker's token, so a kubectl answer proves the
broker's credential was added; what kubectl prints is what is checked.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from access.shared.devca import DevCA
from tests.e2e.conftest import BrokerProcess, Cli, _require_tool, make_broker_process, new_cli, running
from tests.fakes.echo import echo_server
from tests.fakes.kubeapi import KubeAPI, Running

pytestmark = pytest.mark.e2e

BOUND = 20.0
WEB = "web-5d9c7b7f6d-2xkqp"
OTHER = "web-5d9c7b7f6d-8mz4r"


@pytest.fixture
def cluster_broker(
    tmp_path: Path, devca: DevCA, sqlite_url: str, kube_api: KubeAPI
) -> Iterator[BrokerProcess]:
    _require_tool("kubectl")
    token = tmp_path / "kube-token"
    token.write_text(kube_api.token + "\n")
    token.chmod(0o600)
    block = {"server": kube_api.url, "ca_file": str(kube_api.ca_file), "token_file": str(token)}
    services = [
        {
            "name": "prod-cluster",
            "kind": "kubernetes",
            "scopes": ["read", "operate"],
            "max_ttl": "1h",
            "kubernetes": {**block, "impersonate": True},
        },
        {
            "name": "shop-cluster",
            "kind": "kubernetes",
            "scopes": ["read"],
            "max_ttl": "1h",
            "kubernetes": {
                **block,
                "scopes": {
                    "read": {
                        "namespaces": ["shop"],
                        "rules": [
                            {"verbs": ["get", "list", "watch"], "resources": ["*"], "exclude": ["secrets"]}
                        ],
                    }
                },
            },
        },
    ]
    policy = {
        "services": services,
        "rules": [
            {
                "name": "sre",
                "subjects": {"groups": ["sre"]},
                "services": ["prod-cluster", "shop-cluster"],
                "scopes": ["read", "operate"],
                "max_ttl": "30m",
            }
        ],
        "audit": {"readers": {"groups": ["sre"]}},
    }
    proc = make_broker_process(tmp_path, devca, sqlite_url, policy)
    proc.add_user("alice", "alice-password-1", "sre", "oncall")
    with running(proc):
        yield proc


@pytest.fixture
def alice(tmp_path: Path, cluster_broker: BrokerProcess) -> Cli:
    cli = new_cli(tmp_path, cluster_broker)
    assert cli.device_login("alice", "alice-password-1").returncode == 0
    return cli


def _exec(scope: str, *args: str, service: str = "prod-cluster") -> list[str]:
    """``access exec SERVICE --scope SCOPE -- kubectl ARGS``"""
    return ["exec", service, "--scope", scope, "--ttl", "10m", "--", "kubectl", *args]


def _kubectl(
    cli: Cli, scope: str, *args: str, service: str = "prod-cluster", input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return cli.run(*_exec(scope, *args, service=service), input=input, timeout=BOUND)


@pytest.fixture
def background() -> Iterator[Any]:
    started: list[Running] = []

    def start(cli: Cli, *args: str) -> Running:
        started.append(Running(cli.popen(*args), BOUND))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def _grant_of(cli: Cli, service: str, scope: str) -> str:
    grants = json.loads(cli.run("grants", "-o", "json").stdout)
    return next(
        g["id"] for g in grants if g["service"] == service and g["scope"] == scope and g["state"] == "active"
    )


def _statements(cli: Cli, grant: str, count: int) -> list[str]:
    """The audited requests of ``grant`` (flushed by the broker within about a second: polled)."""
    deadline = time.monotonic() + BOUND
    while True:
        result = cli.run("audit", "--grant", grant, "--queries", "-o", "json", "-n", "1000")
        assert result.returncode == 0, result.stderr
        texts = [row["text"] for row in json.loads(result.stdout)]
        if len(texts) >= count or time.monotonic() > deadline:
            return texts
        time.sleep(0.2)  # a bounded poll for the flush loop's ledger entries, not a synchronisation


def test_read_lists_and_is_refused_what_read_and_its_namespaces_do_not_allow(
    alice: Cli, kube_api: KubeAPI, tmp_path: Path
) -> None:
    listed = _kubectl(alice, "read", "get", "pods", "-A")
    assert listed.returncode == 0, listed.stderr
    rows = [re.split(r"\s{2,}", line.strip()) for line in listed.stdout.strip().splitlines()]
    assert rows[0][:2] == ["NAMESPACE", "NAME"]
    assert [r[1] for r in rows[1:]] == ["invoicer-0", "coredns-668d6bf9bc-xq7rn", WEB, OTHER]

    delete = _kubectl(alice, "read", "delete", "pod", OTHER, "-n", "shop")
    assert delete.returncode == 1
    assert (
        "Error from server (Forbidden): forbidden by access: scope read does not allow delete on pods "
        "in namespace shop" in delete.stderr
    )
    assert kube_api.get("pods", "shop", OTHER) is not None
    secrets = _kubectl(alice, "read", "get", "secrets", "-n", "shop")
    assert "scope read does not allow list on secrets in namespace shop" in secrets.stderr
    exec_ = _kubectl(alice, "read", "exec", WEB, "-n", "shop", "--", "echo", "hi")
    assert exec_.returncode != 0 and "scope read does not allow create on pods/exec" in exec_.stderr
    forward = _kubectl(alice, "read", "port-forward", f"pod/{WEB}", "-n", "shop", "0:8080")
    assert forward.returncode != 0, forward.stdout
    assert "scope read does not allow create on pods/portforward" in forward.stderr, forward.stderr
    as_admin = _kubectl(alice, "read", "get", "pods", "-n", "shop", "--as", "system:admin")
    assert as_admin.returncode == 1 and "--as and --as-group are not allowed" in as_admin.stderr

    # The cluster saw the broker's credential on every request, and who was behind it.
    seen = kube_api.seen
    assert seen and {s.user for s in seen} == {kube_api.options.token_user}
    assert {(s.impersonate_user, s.impersonate_groups) for s in seen} == {("alice", ("oncall", "sre"))}
    assert not [s for s in seen if s.method == "DELETE" or "secrets" in s.path or "exec" in s.path]
    assert not [s for s in seen if "portforward" in s.path]

    # A scope limited to one namespace (shop-cluster's read).
    shop = _kubectl(alice, "read", "get", "pods", "-n", "shop", "-o", "name", service="shop-cluster")
    assert (shop.returncode, shop.stdout.split()) == (0, [f"pod/{WEB}", f"pod/{OTHER}"]), shop.stderr
    everywhere = _kubectl(alice, "read", "get", "pods", "-A", service="shop-cluster")
    assert "scope read does not allow list on pods across all namespaces (only in shop)" in everywhere.stderr
    system = _kubectl(alice, "read", "get", "pods", "-n", "kube-system", service="shop-cluster")
    assert "in namespace kube-system (only in shop)" in system.stderr

    grant = _grant_of(alice, "prod-cluster", "read")
    texts = _statements(alice, grant, 4)
    assert any(re.fullmatch(r"list pods 200 \d+", t) for t in texts), texts
    assert any(
        t.startswith(f"delete pods shop/{OTHER} 403 0 refused: scope read does not allow") for t in texts
    )
    assert any(t.startswith("get /version 200") for t in texts)


def test_operate_restarts_deletes_execs_and_forwards(
    alice: Cli, kube_api: KubeAPI, background: Any, tmp_path: Path
) -> None:
    restart = _kubectl(alice, "operate", "rollout", "restart", "deployment/web", "-n", "shop")
    assert (restart.returncode, restart.stdout.strip()) == (0, "deployment.apps/web restarted"), (
        restart.stderr
    )
    delete = _kubectl(alice, "operate", "delete", "pod", OTHER, "-n", "shop")
    assert (delete.returncode, delete.stdout.strip()) == (0, f'pod "{OTHER}" deleted'), delete.stderr
    assert kube_api.get("pods", "shop", OTHER) is None
    text = "line one\nline two\n" * 200
    exec_ = _kubectl(alice, "operate", "exec", "-i", WEB, "-n", "shop", "--", "cat", input=text)
    assert (exec_.returncode, exec_.stdout) == (0, text), exec_.stderr
    # port-forward, and a kubeconfig for a running `access connect`
    connect = background(alice, "connect", "prod-cluster", "--scope", "operate", "--ttl", "10m")
    assert "forwarding 127.0.0.1:" in connect_line(connect)
    config = tmp_path / "kubeconfig"
    written = alice.run("kubeconfig", "prod-cluster", "--scope", "operate", "--file", str(config))
    assert written.returncode == 0, written.stderr
    assert config.stat().st_mode & 0o777 == 0o600
    assert kube_api.token not in config.read_text()
    env = {"KUBECONFIG": str(config), "HOME": str(tmp_path / "kube-home")}
    with echo_server(BOUND) as port:
        kube_api.forward(8080, port)
        forward = background(alice, *_exec("operate", "port-forward", f"pod/{WEB}", "-n", "shop", ":8080"))
        match = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> 8080", forward.line())
        assert match, "kubectl did not say where it listens"
        with socket.create_connection(("127.0.0.1", int(match[1])), timeout=BOUND) as conn:
            conn.sendall(b"ping through the tunnel")
            received = b""
            while len(received) < 23:
                received += conn.recv(65536)
        assert received == b"ping through the tunnel"
    listed = subprocess.run(
        ["kubectl", "get", "pods", "-n", "billing", "-o", "name"],
        env={**alice.env, **env},
        capture_output=True,
        text=True,
        timeout=BOUND,
    )
    assert (listed.returncode, listed.stdout) == (0, "pod/invoicer-0\n"), listed.stderr
    # Another user of the machine (no token of this run) is not let in.
    port = json.loads(config.read_text())["clusters"][0]["cluster"]["server"].rsplit(":", 1)[1]
    stranger = subprocess.run(
        [
            "kubectl",
            "--server",
            f"https://127.0.0.1:{port}",
            "--insecure-skip-tls-verify",
            "--token",
            "guess",
            "get",
            "pods",
        ],
        env={**alice.env, "KUBECONFIG": "/dev/null", "HOME": str(tmp_path / "stranger")},
        capture_output=True,
        text=True,
        timeout=BOUND,
    )
    assert stranger.returncode == 1 and "error: You must be logged in to the server" in stranger.stderr

    grant = _grant_of(alice, "prod-cluster", "operate")
    texts = _statements(alice, grant, 3)
    assert f"create pods/exec shop/{WEB} -- cat 101 0" in texts, texts
    assert any(t.startswith("patch deployments shop/web (apps) 200") for t in texts), texts


def connect_line(running: Running) -> str:
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        for line in running.stderr:
            if "forwarding" in line:
                return line
        time.sleep(0.05)  # a bounded wait for connect's first line
    pytest.fail(f"access connect printed nothing: {''.join(running.stderr)}")


def test_streams_follow_and_are_cut_when_the_grant_ends(
    alice: Cli, kube_api: KubeAPI, background: Any
) -> None:
    logs = background(alice, *_exec("operate", "logs", "-f", WEB, "-n", "shop"))
    assert logs.line().endswith("#1\n")
    kube_api.append_log("shop", WEB, "a line written while kubectl follows")
    while (line := logs.line()) != "a line written while kubectl follows\n":
        assert line.startswith("10.244.0.1"), line
    watch = background(alice, *_exec("operate", "get", "pods", "-n", "shop", "-w"))
    assert watch.line().split()[:2] == ["NAME", "READY"]
    assert {watch.line().split()[0] for _ in range(2)} == {WEB, OTHER}
    kube_api.wait_for(lambda api: any(s.verb == "watch" for s in api.seen))
    kube_api.delete("pods", "shop", OTHER)
    assert watch.line().split()[:3] == [OTHER, "1/1", "Terminating"]
    grant = _grant_of(alice, "prod-cluster", "operate")
    revoked = alice.run("revoke", grant)
    started = time.monotonic()
    assert revoked.returncode == 0, revoked.stderr
    assert logs.wait() != 0 and watch.wait() != 0
    assert time.monotonic() - started < 1.0  # the revoke's own event cuts at once
    assert "revoked" in "".join(logs.stderr)
    texts = _statements(alice, grant, 2)
    assert any(t.startswith(f"get pods/log shop/{WEB} 200") and t.endswith(" cut") for t in texts), texts
    assert any(t.startswith("watch pods shop 200") and t.endswith(" cut") for t in texts), texts

    # And at expiry: a short grant's followed log ends within a second of its end.
    made = alice.run(
        "request", "prod-cluster", "--scope", "operate", "--ttl", "4s", "--reason", "expiry", "-o", "json"
    )
    assert made.returncode == 0, made.stderr
    short = json.loads(made.stdout)
    expires = datetime.fromisoformat(short["expires_at"])
    follow = background(
        alice,
        "exec",
        "prod-cluster",
        "--grant",
        short["id"],
        "--",
        "kubectl",
        "logs",
        "-f",
        WEB,
        "-n",
        "shop",
    )
    assert follow.line().endswith("#1\n")
    assert datetime.now(UTC) < expires  # it was streaming before the end
    assert follow.wait() != 0
    late = (datetime.now(UTC) - expires).total_seconds()
    print(f"\nkubectl logs -f ended {late:+.2f} s after the grant's expiry")
    assert -0.5 < late < 1.0
    assert "expired" in "".join(follow.stderr)
