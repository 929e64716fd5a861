"""The Kubernetes API stand-in against the real kubectl: what kubectl prints is what is checked.

kubectl must be installed (``.ci/run`` installs it); without it these tests fail, they do not skip.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import shutil
import socket
import ssl
import struct
import subprocess
import termios
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from access.broker.clock import FakeClock
from tests.fakes.echo import echo_server
from tests.fakes.kubeapi import KubeAPI, Running, kube_api, kubectl_env

BOUND = 15.0  # seconds: every kubectl run and every wait on its output
WEB = "web-5d9c7b7f6d-2xkqp"


def _kubectl_path() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl is not installed: run `bash .ci/run` (it installs kubectl 1.32)")
    return path


@pytest.fixture
def kubectl(kube_api: KubeAPI, tmp_path: Path) -> Any:
    """``kubectl(*args, input=..., token=...)`` runs the real kubectl against the stand-in."""
    binary = _kubectl_path()

    def run(*args: str, input: str | None = None, **config: Any) -> subprocess.CompletedProcess[str]:
        kubeconfig = kube_api.kubeconfig(
            tmp_path / f"kubeconfig-{len(config)}-{abs(hash(str(config)))}", **config
        )
        return subprocess.run(
            [binary, *args],
            env=kubectl_env(tmp_path, kubeconfig),
            input=input,
            capture_output=True,
            text=True,
            timeout=BOUND,
        )

    return run


@pytest.fixture
def background(kube_api: KubeAPI, tmp_path: Path) -> Iterator[Any]:
    started: list[Running] = []

    def start(*args: str) -> Running:
        kubeconfig = kube_api.kubeconfig(tmp_path / "kubeconfig-bg")
        env = kubectl_env(tmp_path, kubeconfig)
        started.append(
            Running(
                subprocess.Popen(
                    [_kubectl_path(), *args],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
                BOUND,
            )
        )
        return started[-1]

    yield start
    for running in started:
        running.stop()


def _rows(output: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line.strip()) for line in output.strip().splitlines()]


# -- reads ----------------------------------------------------------------------------------------


def test_get_pods_across_namespaces_prints_the_servers_table(
    kubectl: Any, kube_api: KubeAPI, fake_clock: FakeClock
) -> None:
    result = kubectl("get", "pods", "-A")
    assert result.returncode == 0, result.stderr
    rows = _rows(result.stdout)
    assert rows[0] == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert [r[:5] for r in rows[1:]] == [
        ["billing", "invoicer-0", "1/1", "Running", "2 (2d ago)"],
        ["kube-system", "coredns-668d6bf9bc-xq7rn", "1/1", "Running", "0"],
        ["shop", WEB, "1/1", "Running", "0"],
        ["shop", "web-5d9c7b7f6d-8mz4r", "1/1", "Running", "0"],
    ]
    assert [r[5] for r in rows[1:]] == ["2d", "40d", "5h", "5h12m"]
    listed = [s for s in kube_api.seen if s.path == "/api/v1/pods"]
    assert [(s.verb, s.code) for s in listed] == [("list", 200)]
    # The Cloud SDK dispatcher picks the kubectl matching the server's /version: 1.32.
    assert listed[0].user_agent.startswith("kubectl/v1.32.")
    fake_clock.advance(timedelta(days=3))  # the server prints ages from its own clock
    later = _rows(kubectl("get", "pods", "-A").stdout)
    assert [r[5] for r in later[1:]] == ["5d", "43d", "3d5h", "3d5h"]


def test_get_pods_wide_shows_the_priority_columns(kubectl: Any) -> None:
    result = kubectl("get", "pods", "-n", "shop", "-o", "wide")
    assert result.returncode == 0, result.stderr
    rows = _rows(result.stdout)
    assert rows[0][5:] == ["IP", "NODE", "NOMINATED NODE", "READINESS GATES"]
    assert rows[1][5:] == ["10.244.1.17", "node-1", "<none>", "<none>"]


def test_get_pods_as_json_lists_the_namespaces_pods(kubectl: Any) -> None:
    result = kubectl("get", "pods", "-n", "shop", "-o", "json")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert listed["kind"] == "List"
    assert [p["metadata"]["name"] for p in listed["items"]] == [WEB, "web-5d9c7b7f6d-8mz4r"]
    assert {p["kind"] for p in listed["items"]} == {"Pod"}
    assert listed["items"][0]["status"]["containerStatuses"][0]["ready"] is True


def test_get_of_other_kinds_and_a_missing_pod(kubectl: Any) -> None:
    result = kubectl("get", "deploy,svc,secrets,cm", "-n", "shop")
    assert result.returncode == 0, result.stderr
    for line in (
        "deployment.apps/web   2/2",
        "service/web   ClusterIP   10.96.14.7",
        "secret/web-tls   kubernetes.io/tls",
        "configmap/web-config   1",
    ):
        assert line in re.sub(r" {3,}", "   ", result.stdout), result.stdout
    missing = kubectl("get", "pod", "nope", "-n", "shop")
    assert missing.returncode == 1
    assert 'Error from server (NotFound): pods "nope" not found' in missing.stderr


def test_discovery_serves_aggregated_and_legacy_documents(kube_api: KubeAPI, kubectl: Any) -> None:
    resources = kubectl("api-resources", "--no-headers")
    assert resources.returncode == 0, resources.stderr
    names = {line.split()[0] for line in resources.stdout.splitlines()}
    assert names == {"configmaps", "namespaces", "pods", "secrets", "services", "deployments"}
    headers = {"Authorization": f"Bearer {kube_api.token}"}
    with httpx.Client(
        base_url=kube_api.url, verify=ssl.create_default_context(cafile=kube_api.ca_file), headers=headers
    ) as client:
        aggregated = client.get(
            "/apis",
            headers={"Accept": "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"},
        )
        legacy = client.get("/apis", headers={"Accept": "application/json"})
        version = client.get("/version")
    assert (
        aggregated.headers["content-type"]
        == "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    )
    assert aggregated.json()["kind"] == "APIGroupDiscoveryList"
    assert legacy.json()["kind"] == "APIGroupList"
    assert version.json()["gitVersion"] == "v1.32.4"


# -- writes ---------------------------------------------------------------------------------------


def test_delete_pod(kubectl: Any, kube_api: KubeAPI) -> None:
    result = kubectl("delete", "pod", "web-5d9c7b7f6d-8mz4r", "-n", "shop")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'pod "web-5d9c7b7f6d-8mz4r" deleted'
    assert kube_api.get("pods", "shop", "web-5d9c7b7f6d-8mz4r") is None
    listed = kubectl("get", "pods", "-n", "shop", "-o", "name")
    assert listed.stdout.split() == [f"pod/{WEB}"]


def test_rollout_restart_patches_the_pod_template(kubectl: Any, kube_api: KubeAPI) -> None:
    result = kubectl("rollout", "restart", "deployment/web", "-n", "shop")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "deployment.apps/web restarted"
    deployment = kube_api.get("deployments", "shop", "web")
    assert deployment is not None
    assert "kubectl.kubernetes.io/restartedAt" in deployment["spec"]["template"]["metadata"]["annotations"]
    assert deployment["metadata"]["generation"] == 2
    patch = [s for s in kube_api.seen if s.method == "PATCH"]
    assert [(s.verb, s.resource, s.namespace, s.name) for s in patch] == [
        ("patch", "deployments", "shop", "web")
    ]


def test_scale_patches_the_scale_subresource(kubectl: Any, kube_api: KubeAPI) -> None:
    result = kubectl("scale", "deployment/web", "-n", "shop", "--replicas=3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "deployment.apps/web scaled"
    assert kubectl("get", "deploy", "web", "-n", "shop", "--no-headers").stdout.split()[1] == "3/3"


# -- streams --------------------------------------------------------------------------------------


def test_logs_follow_streams_until_the_log_ends(background: Any, kube_api: KubeAPI) -> None:
    logs = background("logs", "-f", WEB, "-n", "shop")
    assert [logs.line() for _ in range(3)] == [
        f'10.244.0.1 - - "GET /healthz HTTP/1.1" 200 2 #{i}\n' for i in (1, 2, 3)
    ]
    kube_api.append_log("shop", WEB, "a line written while kubectl follows")
    assert logs.line() == "a line written while kubectl follows\n"
    kube_api.end_log("shop", WEB)
    assert logs.wait() == 0
    follow = [s for s in kube_api.seen if s.resource == "pods/log"]
    assert follow[0].query["follow"] == ["true"]


def test_get_watch_prints_changes_until_the_watch_ends(background: Any, kube_api: KubeAPI) -> None:
    watch = background("get", "pods", "-n", "shop", "-w")
    assert watch.line().split()[:2] == ["NAME", "READY"]
    assert {watch.line().split()[0] for _ in range(2)} == {WEB, "web-5d9c7b7f6d-8mz4r"}
    kube_api.wait_for(lambda api: any(s.verb == "watch" for s in api.seen))
    kube_api.delete("pods", "shop", "web-5d9c7b7f6d-8mz4r")
    assert watch.line().split()[:3] == ["web-5d9c7b7f6d-8mz4r", "1/1", "Terminating"]
    kube_api.end_watches()
    assert watch.wait() == 0


# -- exec -----------------------------------------------------------------------------------------


def test_exec_prints_the_commands_output(kubectl: Any, kube_api: KubeAPI) -> None:
    result = kubectl("exec", WEB, "-n", "shop", "--", "echo", "hi")
    assert (result.returncode, result.stdout, result.stderr) == (0, "hi\n", "")
    (session,) = kube_api.execs
    assert (session.command, session.protocol, session.exit_code) == (["echo", "hi"], "v5.channel.k8s.io", 0)


def test_exec_exits_with_the_commands_code(kubectl: Any) -> None:
    result = kubectl("exec", WEB, "-n", "shop", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert result.returncode == 3
    assert result.stdout == "out\n"
    assert result.stderr == "err\ncommand terminated with exit code 3\n"


def test_exec_of_a_missing_command_fails_as_the_runtime_does(kubectl: Any) -> None:
    result = kubectl("exec", WEB, "-n", "shop", "--", "nosuch")
    assert result.returncode == 1
    assert 'exec: "nosuch": executable file not found in $PATH' in result.stderr


def test_exec_with_stdin_ends_when_stdin_does(kubectl: Any, kube_api: KubeAPI) -> None:
    text = "line one\nline two\n" * 200
    result = kubectl("exec", "-i", WEB, "-n", "shop", "--", "cat", input=text)
    assert (result.returncode, result.stdout) == (0, text)
    assert kube_api.execs[0].stdin


def test_exec_serves_the_v4_channel_protocol_too(kube_api: KubeAPI) -> None:
    # kubectl 1.32 offers only v5; older clients (and some libraries) still ask for v4.
    url = f"wss://127.0.0.1:{kube_api.server.port}/api/v1/namespaces/shop/pods/{WEB}/exec"
    with connect(
        f"{url}?command=sh&command=-c&command=echo%20four%3B%20exit%205&stdout=true&stderr=true",
        ssl=ssl.create_default_context(cafile=kube_api.ca_file),
        subprotocols=[Subprotocol("v4.channel.k8s.io")],
        additional_headers={"Authorization": f"Bearer {kube_api.token}"},
        open_timeout=BOUND,
    ) as ws:
        assert ws.subprotocol == "v4.channel.k8s.io"
        messages = [ws.recv(BOUND) for _ in range(2)]
    assert messages[0] == b"\x01four\n"
    assert messages[1][:1] == b"\x03"
    assert json.loads(messages[1][1:])["details"] == {"causes": [{"reason": "ExitCode", "message": "5"}]}


def test_exec_with_a_terminal_sends_its_size(kube_api: KubeAPI, tmp_path: Path) -> None:
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    env = kubectl_env(tmp_path, kube_api.kubeconfig(tmp_path / "kubeconfig"))
    process = subprocess.Popen(
        [_kubectl_path(), "exec", "-it", WEB, "-n", "shop", "--", "cat"],
        env=env,
        stdin=child,
        stdout=child,
        stderr=child,
        start_new_session=True,
    )
    os.close(child)
    try:
        session = kube_api.wait_for(lambda api: [e for e in api.execs if e.resizes])[0]
        assert session.tty and session.resizes[0] == (101, 33)
        os.write(main, b"typed\r")
        seen = b""
        with contextlib.suppress(OSError):
            while b"typed" not in seen:
                seen += _read_within(main, BOUND)
        assert b"typed" in seen
    finally:
        process.kill()
        process.wait(BOUND)
        os.close(main)


def _read_within(fd: int, timeout: float) -> bytes:
    import select

    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        pytest.fail(f"the terminal showed nothing within {timeout} s")
    return os.read(fd, 4096)


# -- port-forward ---------------------------------------------------------------------------------


def test_port_forward_reaches_the_pods_port(background: Any, kube_api: KubeAPI) -> None:
    with echo_server(BOUND) as port:
        kube_api.forward(8080, port)
        forward = background("port-forward", f"pod/{WEB}", "-n", "shop", ":8080")
        match = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> 8080", forward.line())
        assert match, "kubectl did not say where it listens"
        with socket.create_connection(("127.0.0.1", int(match[1])), timeout=BOUND) as conn:
            conn.sendall(b"ping through the tunnel")
            received = b""
            while len(received) < len(b"ping through the tunnel"):
                received += conn.recv(65536)
            conn.shutdown(socket.SHUT_WR)
            assert conn.recv(65536) == b""  # the app saw EOF and closed: so does kubectl's end
        assert received == b"ping through the tunnel"
    (record,) = kube_api.wait_for(lambda api: [f for f in api.forwards if f.bytes_out])
    assert (record.pod, record.port, record.bytes_in, record.bytes_out) == (WEB, 8080, 23, 23)


def test_port_forward_to_a_closed_port_is_an_error_kubectl_prints(background: Any, kube_api: KubeAPI) -> None:
    forward = background("port-forward", f"pod/{WEB}", "-n", "shop", ":9999")
    match = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> 9999", forward.line())
    assert match
    with socket.create_connection(("127.0.0.1", int(match[1])), timeout=BOUND) as conn:
        assert conn.recv(65536) == b""
    kube_api.wait_for(lambda api: any("error forwarding port 9999" in line for line in forward.stderr))


# -- credentials ----------------------------------------------------------------------------------


def test_kubectl_with_a_wrong_token_is_unauthorized(kubectl: Any, kube_api: KubeAPI) -> None:
    result = kubectl("get", "pods", "-A", token="not-the-token")
    assert result.returncode == 1
    # kubectl 1.32's words for the 401 Status on its first discovery request
    assert (
        "error: You must be logged in to the server (the server has asked for the client to provide "
        in result.stderr
    )
    assert kube_api.seen and all(s.code == 401 and s.user == "" for s in kube_api.seen)


@pytest.mark.parametrize("authorization", [None, "Bearer", "Basic YWRtaW46YWRtaW4=", "bearer not-the-token"])
def test_a_request_without_the_token_gets_the_unauthorized_status(
    kube_api: KubeAPI, authorization: str | None
) -> None:
    # (kubectl with no credential at all never asks the server: it prompts for a username first)
    headers = {"Authorization": authorization} if authorization is not None else {}
    verify = ssl.create_default_context(cafile=kube_api.ca_file)
    with httpx.Client(base_url=kube_api.url, verify=verify) as client:
        for path in (
            "/version",
            "/api",
            "/api/v1/namespaces/shop/pods",
            "/api/v1/namespaces/shop/pods/x/exec",
        ):
            response = client.get(path, headers=headers)
            assert response.status_code == 401
            assert response.json() == {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": "Unauthorized",
                "reason": "Unauthorized",
                "code": 401,
            }


def test_a_client_certificate_from_its_ca_authenticates(kubectl: Any, kube_api: KubeAPI) -> None:
    cert = kube_api.client_certificate("access-broker", ("system:masters",))
    result = kubectl("get", "pods", "-n", "billing", "-o", "name", client_cert=cert)
    assert (result.returncode, result.stdout) == (0, "pod/invoicer-0\n"), result.stderr
    assert {s.user for s in kube_api.seen} == {"access-broker"}


def test_impersonation_headers_are_recorded(kubectl: Any, kube_api: KubeAPI) -> None:
    result = kubectl(
        "get", "pods", "-n", "shop", "--as", "alice@example.com", "--as-group", "sre", "--as-group", "oncall"
    )
    assert result.returncode == 0, result.stderr
    (listed,) = [s for s in kube_api.seen if s.resource == "pods"]
    assert (listed.user, listed.impersonate_user) == (kube_api.options.token_user, "alice@example.com")
    assert listed.impersonate_groups == ("sre", "oncall")


def test_required_impersonation_refuses_a_request_without_it(tmp_path: Path) -> None:
    with kube_api(tmp_path / "strict", require_impersonation=True) as api:
        env = kubectl_env(tmp_path, api.kubeconfig(tmp_path / "kubeconfig"))
        plain = subprocess.run(
            [_kubectl_path(), "get", "pods", "-n", "shop"],
            env=env,
            capture_output=True,
            text=True,
            timeout=BOUND,
        )
        impersonating = subprocess.run(
            [_kubectl_path(), "get", "pods", "-n", "shop", "--as", "alice"],
            env=env,
            capture_output=True,
            text=True,
            timeout=BOUND,
        )
    assert plain.returncode == 1
    user = "system:serviceaccount:access-system:access-broker"
    assert (
        f'Error from server (Forbidden): pods is forbidden: User "{user}" cannot list resource "pods"'
        in plain.stderr
    )
    assert impersonating.returncode == 0, impersonating.stderr


# -- bounds ---------------------------------------------------------------------------------------


def test_heads_and_bodies_over_the_limits_are_refused(kube_api: KubeAPI) -> None:
    headers = {"Authorization": f"Bearer {kube_api.token}"}
    verify = ssl.create_default_context(cafile=kube_api.ca_file)
    with httpx.Client(base_url=kube_api.url, verify=verify, headers=headers) as client:
        big_head = client.get("/api/v1/pods", headers={"X-Filler": "x" * 20_000})
        big_body = client.patch(
            "/apis/apps/v1/namespaces/shop/deployments/web",
            content=b"{" + b" " * 2_000_000 + b"}",
            headers={"Content-Type": "application/merge-patch+json"},
        )
    assert big_head.status_code == 431
    assert (big_body.status_code, big_body.json()["reason"]) == (413, "RequestEntityTooLarge")


def test_a_client_that_never_finishes_its_head_is_cut(tmp_path: Path) -> None:
    from tests.fakes.kube.http import Limits

    with kube_api(tmp_path / "slow", limits=Limits(head_timeout=0.3)) as api:
        context = ssl.create_default_context(cafile=api.ca_file)
        with (
            socket.create_connection(("127.0.0.1", api.server.port), timeout=BOUND) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
        ):
            conn.sendall(b"GET /api HTTP/1.1\r\nHost: x\r\n")
            assert conn.recv(65536) == b""  # closed at the head timeout, with nothing sent
