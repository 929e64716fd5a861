"""The admin password comes from the file or environment variable the policy names, read when a
provisioner is built; a missing one is a clear error that never shows a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from access.broker.identities.targets import admin_password
from access.broker.policy.model import AdminCredential, ServiceConfig
from access.broker.provision.common import ProvisionFailed

SVC = ServiceConfig.model_validate(
    {"name": "svc-a", "kind": "tcp", "target": "127.0.0.1:1", "scopes": ["read"], "max_ttl": "1h"}
)


def test_from_a_file_without_its_newline(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    assert admin_password(SVC, AdminCredential(user="a", password_file=str(tmp_path / "pw"))) == "s3cret"


def test_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("H2_ADMIN_PW", "s3cret")
    assert admin_password(SVC, AdminCredential(user="a", password_env="H2_ADMIN_PW")) == "s3cret"
    monkeypatch.delenv("H2_ADMIN_PW")
    with pytest.raises(ProvisionFailed, match=r"H2_ADMIN_PW .* is not set"):
        admin_password(SVC, AdminCredential(user="a", password_env="H2_ADMIN_PW"))


def test_an_unreadable_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ProvisionFailed, match=r"cannot read the admin password file .*missing"):
        admin_password(SVC, AdminCredential(user="a", password_file=str(tmp_path / "missing")))


def test_none_named_is_no_password() -> None:
    assert admin_password(SVC, AdminCredential(user="a")) == ""
