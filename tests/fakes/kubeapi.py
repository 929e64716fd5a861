"""A Kubernetes API stand-in for tests: the real kubectl talks to it over TLS as to a cluster.

No API server can run on these machines, so tests point kubectl (1.32) at this one. It serves
what ``access exec CLUSTER -- kubectl ...`` needs, shaped as a real v1.32 API server shapes it:

- discovery: ``/version``, ``/api``, ``/apis`` (aggregated ``apidiscovery.k8s.io/v2`` when the
  client asks for it, as kubectl 1.30+ does; the legacy APIVersions/APIGroupList otherwise),
  ``/api/v1``, ``/apis/apps``, ``/apis/apps/v1``. The documents (tests/fakes/kube/discovery) are
  the real ones cut down to core/v1 configmaps, namespaces, pods (log, exec, portforward, status),
  secrets, services and apps/v1 deployments (scale, status);
- get and list of those kinds, in one namespace or across all (``-A``), as JSON or as the
  server-side printed ``meta.k8s.io/v1`` Table kubectl asks for (the real printers' columns);
  field selectors on metadata.name/namespace and equality label selectors;
- watch (``?watch=true``): chunked JSON events, replayed from ``resourceVersion`` then live,
  as Tables when asked (column definitions on the first event only, as the server does);
- DELETE of pods (gone at once, the object returned with its deletionTimestamp);
- PATCH (strategic merge or JSON merge patch) of any object (``kubectl rollout restart``), and
  GET/PATCH of ``deployments/scale`` (``kubectl scale``);
- ``pods/log``, with ``follow=true`` streaming until the test ends the log (``end_log``), the
  pod is deleted or the client goes away; ``tailLines``;
- ``pods/exec`` over WebSocket, ``v5.channel.k8s.io`` (and v4): a tiny command set
  (tests/fakes/kube/exec.py) with stdin, exit codes, TTY resize;
- ``pods/portforward`` over WebSocket as kubectl 1.31+ sends it: SPDY/3.1 tunnelled in the
  WebSocket (``SPDY/3.1+portforward.k8s.io``, tests/fakes/kube/spdy.py), to loopback ports the
  test names with ``forward(pod_port, port)``.

Every request needs ``Authorization: Bearer <token>`` with the token the test chose (compared in
constant time) or a client certificate from the stand-in's client CA (``client_certificate``);
anything else gets 401 with the real ``Status`` body (kubectl 1.32 prints "error: You must be
logged in to the server (the server has asked for the client to provide credentials)").
``Impersonate-User``/``Impersonate-Group`` are recorded per request (``seen``);
``require_impersonation=True`` refuses requests without them (403; discovery excepted).

Not served: create/update (POST/PUT) of objects, deletes other than pods, JSON patch and
server-side apply, attach, ``cp`` beyond what ``exec`` gives, SPDY without the WebSocket (kubectl
falls back to it only when the WebSocket upgrade fails), OpenAPI (``/openapi/v2``, ``/openapi/v3``:
404, which ``kubectl get/delete/logs/exec/rollout`` do not need), HTTP/2, watch bookmarks, and
authorization beyond the credential (every authenticated request is allowed).

Bounds: request heads 16 KiB (431), bodies 1 MiB (413), WebSocket messages and SPDY frames
1 MiB, 64 connections, 10 s for a head or a stalled write, 30 s idle between requests. Watches
end after ``timeoutSeconds`` (default 1800); a followed log, a watch, an exec or a port-forward
otherwise lasts until the client goes away, the test ends it, or the stand-in stops.

What kubectl 1.32 on this machine does against it (seen in ``seen``): the Cloud SDK dispatcher
(/usr/bin/kubectl) first asks ``/version`` with the same credential and runs the kubectl that
matches the server's minor version, so ``version.json`` says v1.32.4; discovery is aggregated;
``get`` asks for Tables; exec offers only ``v5.channel.k8s.io``; port-forward offers only
``SPDY/3.1+portforward.k8s.io``. A kubeconfig whose user has no credential at all makes kubectl
prompt for a username before it sends anything (``error: EOF`` without a terminal).

``KubeAPI`` runs the server on its own event loop in a daemon thread; its methods are for the
test's thread. ``kube_api(directory)`` is the context manager; the ``kube_api`` fixture in
tests/conftest.py gives a running one with the defaults.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import os
import queue
import secrets
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from access.shared.devca import make_ca
from tests.fakes.kube.api import API, Options, Seen
from tests.fakes.kube.exec import Exec
from tests.fakes.kube.http import Limits, Server
from tests.fakes.kube.objects import Store, seed
from tests.fakes.kube.spdy import PortForward
from tests.fakes.kube.status import refuse

__all__ = ["KubeAPI", "Running", "Seen", "kube_api", "kubectl_env"]

T = TypeVar("T")
BOUND = 10.0  # seconds: every wait on the stand-in's loop from the test's thread


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


class _ClientCA:
    """The CA whose client certificates the stand-in accepts (the API server's --client-ca-file)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stand-in client CA")])
        now = datetime.now(UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = directory / "client-ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, user: str, groups: tuple[str, ...]) -> tuple[Path, Path]:
        """A certificate for ``user`` (CN) in ``groups`` (O), as kube-apiserver reads them."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
            + [x509.NameAttribute(NameOID.COMMON_NAME, user)]
        )
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        stem = "".join(c if c.isalnum() else "-" for c in user)
        cert_path, key_path = self.directory / f"{stem}.pem", self.directory / f"{stem}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_private(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        return cert_path, key_path


class KubeAPI:
    def __init__(
        self,
        directory: Path,
        *,
        token: str | None = None,
        require_impersonation: bool = False,
        clock: Callable[[], datetime] | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.token = token or secrets.token_urlsafe(24)
        self.ca = make_ca(directory / "tls")
        self.client_ca = _ClientCA(directory / "tls")
        self.now = clock or (lambda: datetime.now(UTC))
        self.store = Store(self.now)
        seed(self.store)
        self.options = Options(self.token, require_impersonation=require_impersonation)
        self.api = API(self.store, self.options, self.now)
        self.server = Server(self.api, self._tls(), limits, refuse)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kubeapi", daemon=True)

    def _tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.ca.server_cert, self.ca.server_key)
        context.load_verify_locations(self.client_ca.path)
        context.verify_mode = ssl.CERT_OPTIONAL  # a client certificate is one way to authenticate
        context.set_alpn_protocols(["http/1.1"])
        return context

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> KubeAPI:
        self._thread.start()
        self._call(self.server.start())
        self.api.port = self.server.port
        return self

    def stop(self) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(BOUND)
        self._loop.close()

    async def _shutdown(self) -> None:
        self.store.end_watches()
        for log in self.store.logs.values():
            log.ended = True
            log.changed.set()
        await self.server.stop()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(BOUND)

    def _do(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the stand-in's loop (the store is not thread-safe) and return its result."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except Exception as exc:  # handed to the test's thread
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future.result(BOUND)

    # -- what a client needs -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.port}"

    @property
    def ca_file(self) -> Path:
        return self.ca.ca_cert

    def client_certificate(self, user: str, groups: tuple[str, ...] = ()) -> tuple[Path, Path]:
        return self.client_ca.issue(user, groups)

    def kubeconfig(
        self,
        path: Path,
        *,
        token: str | None = None,
        client_cert: tuple[Path, Path] | None = None,
        namespace: str = "default",
        server: str | None = None,
    ) -> Path:
        """Write a kubeconfig (mode 0600) for the stand-in: its CA, and the stand-in's token unless
        ``token`` or ``client_cert`` says otherwise (``token=""``: no credential, and kubectl prompts)."""
        user: dict[str, str] = {}
        if client_cert is not None:
            user = {"client-certificate": str(client_cert[0]), "client-key": str(client_cert[1])}
        elif token != "":
            user = {"token": self.token if token is None else token}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "standin",
                    "cluster": {"server": server or self.url, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": "standin", "user": user}],
            "contexts": [
                {
                    "name": "standin",
                    "context": {"cluster": "standin", "user": "standin", "namespace": namespace},
                }
            ],
            "current-context": "standin",
        }
        _write_private(path, yaml.safe_dump(config).encode())
        return path

    # -- what the test controls and observes ---------------------------------------------------

    def forward(self, pod_port: int, port: int, host: str = "127.0.0.1") -> None:
        """Connections to ``pod_port`` of any pod go to ``host:port``."""
        self.options.forward[pod_port] = (host, port)

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self._do(lambda: copy.deepcopy(self.store.get(resource, namespace, name)))

    def create(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self._do(lambda: copy.deepcopy(self.store.create(resource, copy.deepcopy(obj))))

    def delete(self, resource: str, namespace: str, name: str) -> None:
        self._do(lambda: self.store.delete(resource, namespace, name))

    def append_log(self, namespace: str, pod: str, *lines: str) -> None:
        self._do(lambda: self.store.append_log(namespace, pod, *lines))

    def end_log(self, namespace: str, pod: str) -> None:
        self._do(lambda: self.store.end_log(namespace, pod))

    def end_watches(self) -> None:
        self._do(self.store.end_watches)

    @property
    def seen(self) -> list[Seen]:
        return self._do(lambda: list(self.api.seen))

    @property
    def execs(self) -> list[Exec]:
        return self._do(lambda: copy.deepcopy(self.api.execs))

    @property
    def forwards(self) -> list[PortForward]:
        return self._do(lambda: copy.deepcopy(self.api.forwards))

    def wait_for(self, what: Callable[[KubeAPI], T], timeout: float = BOUND) -> T:
        """Poll ``what(self)`` until it is truthy (bounded); returns it.

        Raises:
            TimeoutError: still falsy after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while not (value := what(self)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the stand-in did not see it within {timeout} s")
            time.sleep(0.02)
        return value


class Running:
    """A process that keeps running (kubectl logs -f, get -w, port-forward; access exec around
    them): its stdout line by line and its stderr, every wait bounded by ``bound`` seconds."""

    def __init__(self, process: subprocess.Popen[str], bound: float = BOUND) -> None:
        self.process = process
        self.bound = bound
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        assert process.stdout is not None and process.stderr is not None
        self.pumps = [
            threading.Thread(target=self._pump, args=(process.stdout, self.lines.put), daemon=True),
            threading.Thread(target=self._pump, args=(process.stderr, self.stderr.append), daemon=True),
        ]
        for pump in self.pumps:
            pump.start()

    @staticmethod
    def _pump(stream: Any, sink: Callable[[str], None]) -> None:
        with stream:
            for line in iter(stream.readline, ""):
                sink(line)

    def line(self) -> str:
        try:
            return self.lines.get(timeout=self.bound)
        except queue.Empty:
            raise AssertionError(
                f"it printed nothing more within {self.bound} s; stderr: {''.join(self.stderr)}"
            ) from None

    def wait(self) -> int:
        return self.process.wait(self.bound)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(self.bound)
        for pump in self.pumps:
            pump.join(self.bound)


def kubectl_env(home: Path, kubeconfig: Path) -> dict[str, str]:
    """The environment for a kubectl child: its kubeconfig, and a HOME and cache of its own (the
    Cloud SDK dispatcher and kubectl both cache what the server said there)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "CLOUDSDK"))}
    return env | {"KUBECONFIG": str(kubeconfig), "HOME": str(home), "KUBECACHEDIR": str(home / "kube-cache")}


@contextlib.contextmanager
def kube_api(directory: Path, **options: Any) -> Iterator[KubeAPI]:
    api = KubeAPI(directory, **options).start()
    try:
        yield api
    finally:
        api.stop()
