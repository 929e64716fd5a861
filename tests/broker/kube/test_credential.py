"""The broker's credential for an API server: read when a channel opens, never in the policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from access.broker.errors import Unavailable
from access.broker.kube.channel import _tls, forwarding_for
from access.broker.kube.config import KubernetesConfig


def _block(**fields: object) -> KubernetesConfig:
    return KubernetesConfig.model_validate({"server": "https://kube.internal:6443", **fields})


def test_a_token_file_is_read_at_each_open_and_impersonation_follows_the_policy(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    block = _block(token_file=str(token), impersonate=True)
    forwarding = forwarding_for("c", "kube.internal:6443", block, "alice", ("sre",))
    assert (forwarding.authorization, forwarding.user, forwarding.groups) == (
        "Bearer first",
        "alice",
        ("sre",),
    )
    assert "first" not in repr(forwarding)
    token.write_text("rotated")
    plain = forwarding_for("c", "kube.internal:6443", _block(token_file=str(token)), "alice", ("sre",))
    assert (plain.authorization, plain.user, plain.groups) == ("Bearer rotated", None, ())


def test_a_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCESS_TEST_KUBE_TOKEN", "from-env")
    block = _block(token_env="ACCESS_TEST_KUBE_TOKEN")
    assert forwarding_for("c", "k:6443", block, "a", ()).authorization == "Bearer from-env"


@pytest.mark.parametrize("content", [None, "", "two words"])
def test_a_missing_or_unusable_token_refuses_the_channel(tmp_path: Path, content: str | None) -> None:
    token = tmp_path / "token"
    if content is not None:
        token.write_text(content)
    with pytest.raises(Unavailable, match=r"token for c|no usable token for c") as caught:
        forwarding_for("c", "k:6443", _block(token_file=str(token)), "a", ())
    assert caught.value.hint is not None and "kubernetes.token_file" in caught.value.hint


def test_a_client_certificate_is_loaded_and_a_bad_one_refused(tmp_path: Path) -> None:
    from access.shared.devca import make_ca

    ca = make_ca(tmp_path / "ca")
    block = _block(
        client_cert_file=str(ca.server_cert), client_key_file=str(ca.server_key), ca_file=str(ca.ca_cert)
    )
    tls = _tls("c", block)
    assert tls.context() is not None and forwarding_for("c", "k:6443", block, "a", ()).authorization is None
    with pytest.raises(Unavailable, match="cannot load its TLS files for c"):
        _tls("c", _block(client_cert_file="/nonexistent", client_key_file="/nonexistent"))
