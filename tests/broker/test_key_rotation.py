"""Rotating the token and audit keys without logging anyone out (docs/deploy.md, "Rotating the
keys"): the older keys in ``previous_*_key_files`` verify and open what they made, never sign;
the replicas' recorded keys follow the rotation while the broker id on the targets stays; on
SQLite and PostgreSQL with the fake clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt
import pyotp
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from access.broker import startup
from access.broker.audit.checkpoints import audit_public_keys, verify_ledger, write_checkpoint
from access.broker.auth.identity import totp
from access.broker.auth.tokens import authenticate, issue_access_token
from access.broker.clock import FakeClock
from access.broker.errors import Misconfigured, Unauthenticated
from access.broker.identities.sealing import Sealer
from access.broker.identities.targets import broker_id
from access.broker.keys import key_id, load_or_create_key
from access.broker.runtime import Broker
from access.broker.store.tables import principals
from tests.broker.conftest import add_user, audit_rows, login

IP = "192.0.2.7"
_TOTP_INFO = b"access identities: totp v1"


def _key(path: Path) -> Path:
    load_or_create_key(path)
    return path


def _stored_totp(broker: Broker) -> bytes:
    with broker.transaction() as conn:
        return bytes(conn.execute(sa.select(principals.c.totp_secret)).scalar_one())


def _rotated(make_broker: Any, db_url: str, tmp_path: Path, old: Broker, **more: Any) -> Broker:
    """A replica that signs with new keys and keeps ``old``'s as the previous ones."""
    return make_broker(
        db_url=db_url,
        signing_key_file=_key(tmp_path / "new-token.pem"),
        audit_key_file=_key(tmp_path / "new-audit.pem"),
        previous_signing_key_files=(old.settings.resolved_signing_key_file,),
        previous_audit_key_files=(old.settings.resolved_audit_key_file,),
        **more,
    )


def test_a_rotation_keeps_tokens_sealed_secrets_and_checkpoints(
    make_broker: Any, db_url: str, tmp_path: Path, fake_clock: FakeClock
) -> None:
    old = make_broker(db_url=db_url)
    startup.claim_identity(old, stable_issuer=True)
    ours = broker_id(old)
    user = add_user(old, "alice")
    before = login(old, user).access_token
    enrolment = totp.begin_enrolment(old, "alice", actor="alice")
    totp.confirm_enrolment(old, "alice", pyotp.TOTP(enrolment.secret).at(fake_clock.now()), IP)
    fake_clock.advance(30)
    write_checkpoint(old)
    sealed_by_old = _stored_totp(old)

    new = _rotated(make_broker, db_url, tmp_path, old)
    startup.claim_identity(new, stable_issuer=True)  # the recorded keys are older keys of its rings

    # A token the old key signed still signs its person in; a new one names the new key.
    assert authenticate(new, before).principal_id == user.id
    after, _ = issue_access_token(
        new, principal_id=user.id, session_id=authenticate(new, before).session_id, client_id="access-cli"
    )
    assert jwt.get_unverified_header(after)["kid"] == key_id(new.token_key) != key_id(old.token_key)
    assert authenticate(new, after).principal_id == user.id
    with pytest.raises(Unauthenticated, match="forged"):
        authenticate(old, after)  # a replica that does not know the new key yet refuses it

    # The TOTP secret the old key sealed still checks a code, and is sealed again with the new key.
    code = pyotp.TOTP(enrolment.secret).at(fake_clock.now())
    with new.transaction() as conn:
        assert totp.check_sign_in(conn, new, user, code)[0]
    assert _stored_totp(new) != sealed_by_old
    assert Sealer(new.token_key, _TOTP_INFO).open(user.id, _stored_totp(new)) == enrolment.secret

    # Checkpoints the old audit key signed verify with the ring, and only with it.
    write_checkpoint(new)
    assert verify_ledger(new.engine, audit_public_keys(new)).ok
    alone = verify_ledger(new.engine, new.audit_key.public_key())
    assert [p.kind for p in alone.problems] == ["bad_signature"]

    # The identities on the targets keep the broker id they were made under.
    assert broker_id(new) == ours == key_id(old.token_key)


def test_replicas_follow_the_rotation_in_phases(make_broker: Any, db_url: str, tmp_path: Path) -> None:
    old = make_broker(db_url=db_url)
    startup.claim_identity(old, stable_issuer=True)
    new_token, new_audit = _key(tmp_path / "new-token.pem"), _key(tmp_path / "new-audit.pem")
    # Phase 1: every replica learns the new keys while still signing with the old ones.
    staged = make_broker(
        db_url=db_url,
        signing_key_file=old.settings.resolved_signing_key_file,
        audit_key_file=old.settings.resolved_audit_key_file,
        previous_signing_key_files=(new_token,),
        previous_audit_key_files=(new_audit,),
    )
    startup.claim_identity(staged, stable_issuer=True)
    # Phase 2: a replica signs with the new keys; the database records them.
    rotated = _rotated(make_broker, db_url, tmp_path, old)
    startup.claim_identity(rotated, stable_issuer=True)
    startup.claim_identity(staged, stable_issuer=True)  # a phase-1 replica restarting still fits
    startup.claim_identity(rotated, stable_issuer=True)
    with pytest.raises(Misconfigured) as refused:
        startup.claim_identity(old, stable_issuer=True)  # one that never learnt the new keys
    assert f"the database's is {key_id(rotated.token_key)}" in refused.value.message
    # Phase 3: the old keys leave the ring; the fleet's broker id stays.
    done = make_broker(db_url=db_url, signing_key_file=new_token, audit_key_file=new_audit)
    startup.claim_identity(done, stable_issuer=True)
    assert broker_id(done) == key_id(old.token_key)


def test_keys_reseal_lets_the_old_key_go(
    tmp_path: Path, db_url: str, fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch, make_broker: Any
) -> None:
    from access.broker.admin.main import app

    old = make_broker(db_url=db_url)
    add_user(old, "alice")
    enrolment = totp.begin_enrolment(old, "alice", actor="alice")
    totp.confirm_enrolment(old, "alice", pyotp.TOTP(enrolment.secret).at(fake_clock.now()), IP)
    new_token, new_audit = _key(tmp_path / "new-token.pem"), _key(tmp_path / "new-audit.pem")
    monkeypatch.setenv("ACCESS_BROKER_SIGNING_KEY_FILE", str(new_token))
    monkeypatch.setenv("ACCESS_BROKER_AUDIT_KEY_FILE", str(new_audit))

    def run(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(
            app, [*args, "--data-dir", str(old.settings.data_dir), "--database-url", db_url]
        )
        return result.exit_code, result.stdout, result.stderr

    # Without the old key in the ring, its secret opens with no key: said, exit 1, nothing changed.
    code, _, err = run("keys", "reseal")
    assert code == 1 and "1 TOTP secret(s) open with no key of the ring" in err
    monkeypatch.setenv(
        "ACCESS_BROKER_PREVIOUS_SIGNING_KEY_FILES", str(old.settings.resolved_signing_key_file)
    )
    code, out, _ = run("keys", "show", "-o", "json")
    assert code == 0 and out.strip().startswith('{"token": [')
    code, _, err = run("keys", "reseal")
    assert code == 0 and "sealed 1 TOTP secret(s) again" in err
    code, _, err = run("keys", "reseal")
    assert code == 0 and "sealed 0 TOTP secret(s) again" in err

    alone = make_broker(db_url=db_url, signing_key_file=new_token, audit_key_file=new_audit)
    assert (
        Sealer(alone.token_key, _TOTP_INFO).open(_principal(alone), _stored_totp(alone)) == enrolment.secret
    )
    entries = audit_rows(alone, "keys.reseal")
    assert [e["details"]["resealed"] for e in entries] == [0, 1, 0]
    assert {e["details"]["key_id"] for e in entries} == {key_id(alone.token_key)}


def _principal(broker: Broker) -> str:
    with broker.transaction() as conn:
        return str(conn.execute(sa.select(principals.c.id).where(principals.c.name == "alice")).scalar_one())
