"""TOTP (RFC 6238) for the embedded directory: enrolment, sign-in with a code, replay and drift,
rate limits, the sealed column, reset, and ``access login --mfa``'s device logins; on SQLite and
PostgreSQL with the fake clock."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pyotp
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from access.broker.auth import device, websessions
from access.broker.auth.identity import totp
from access.broker.clock import FakeClock
from access.broker.errors import Conflict, Forbidden, InvalidRequest, NotFound, RateLimited, Unauthenticated
from access.broker.runtime import Broker
from access.broker.store.tables import principals, sessions
from tests.broker.conftest import PASSWORD, add_user, audit_rows, ledger_text

IP = "192.0.2.7"


def _code(secret: str, clock: FakeClock, steps: int = 0) -> str:
    """The code an authenticator shows ``steps`` time steps from now."""
    return pyotp.TOTP(secret).at(clock.now() + timedelta(seconds=30 * steps))


def _enrolled(broker: Broker, clock: FakeClock, name: str = "alice") -> str:
    """``name`` with TOTP in force; the secret. The clock moves on a step past the confirming code."""
    add_user(broker, name)
    enrolment = totp.begin_enrolment(broker, name, actor=name)
    totp.confirm_enrolment(broker, name, _code(enrolment.secret, clock), IP)
    clock.advance(30)
    return enrolment.secret


def _device_sign_in(broker: Broker, otp: str = "", *, mfa: bool = False) -> device.SignIn:
    auth = device.start(broker, "access-cli", "laptop-7", IP, mfa_required=mfa)
    return device.sign_in(broker, auth.user_code, "alice", PASSWORD, IP, otp)


def _mfa_at_of_device_login(broker: Broker, signed: device.SignIn) -> object:
    with broker.transaction() as conn:
        from access.broker.store.tables import device_codes

        return conn.execute(
            sa.select(device_codes.c.mfa_at).where(device_codes.c.id == signed.request.id)
        ).scalar()


def test_enrolment_takes_effect_only_once_confirmed(any_broker: Broker, fake_clock: FakeClock) -> None:
    add_user(any_broker)
    enrolment = totp.begin_enrolment(any_broker, "alice", actor="alice")
    assert enrolment.uri.startswith("otpauth://totp/")
    assert "issuer=access%20%28broker.test%29" in enrolment.uri and enrolment.secret in enrolment.uri
    # Pending: the password alone still signs in, without a second factor.
    assert _mfa_at_of_device_login(any_broker, _device_sign_in(any_broker)) is None
    with pytest.raises(Unauthenticated, match="not right"):
        totp.confirm_enrolment(any_broker, "alice", _code(enrolment.secret, fake_clock, 3), IP)
    totp.confirm_enrolment(any_broker, "alice", _code(enrolment.secret, fake_clock), IP)
    fake_clock.advance(30)
    with pytest.raises(Unauthenticated, match="Wrong username, password or one-time code"):
        _device_sign_in(any_broker)  # now the code is required
    with pytest.raises(InvalidRequest, match="no enrolment to confirm"):
        totp.confirm_enrolment(any_broker, "alice", _code(enrolment.secret, fake_clock), IP)
    with pytest.raises(Conflict, match="already has one-time codes"):
        totp.begin_enrolment(any_broker, "alice", actor="alice")
    assert [e["details"]["by"] for e in audit_rows(any_broker, "user.totp_enrol")] == ["self"]
    assert len(audit_rows(any_broker, "user.totp_confirm")) == 1


def test_the_column_holds_the_secret_sealed(any_broker: Broker, fake_clock: FakeClock) -> None:
    secret = _enrolled(any_broker, fake_clock)
    with any_broker.transaction() as conn:
        stored = bytes(conn.execute(sa.select(principals.c.totp_secret)).scalar_one())
    assert secret.encode() not in stored and secret not in stored.hex()
    assert secret not in ledger_text(any_broker)


def test_a_correct_code_signs_in_with_a_second_factor(any_broker: Broker, fake_clock: FakeClock) -> None:
    secret = _enrolled(any_broker, fake_clock)
    signed = _device_sign_in(any_broker, _code(secret, fake_clock))
    assert _mfa_at_of_device_login(any_broker, signed) == fake_clock.now()
    [success] = audit_rows(any_broker, "login.success")[-1:]
    assert success["details"]["mfa"] is True
    fake_clock.advance(30)
    web = websessions.sign_in(any_broker, "alice", PASSWORD, IP, _code(secret, fake_clock))
    assert websessions.authenticate(any_broker, web.token).mfa_at == fake_clock.now()


def test_a_password_only_sign_in_has_no_second_factor(any_broker: Broker) -> None:
    add_user(any_broker)
    assert _mfa_at_of_device_login(any_broker, _device_sign_in(any_broker, "123456")) is None
    web = websessions.sign_in(any_broker, "alice", PASSWORD, IP)
    assert websessions.authenticate(any_broker, web.token).mfa_at is None
    with any_broker.transaction() as conn:
        assert conn.execute(sa.select(sessions.c.mfa_at)).scalar_one() is None


def test_wrong_or_missing_codes_fail_as_one_message_and_are_audited(
    any_broker: Broker, fake_clock: FakeClock
) -> None:
    secret = _enrolled(any_broker, fake_clock)
    wrong = _code(secret, fake_clock, 5)
    for otp in ("", wrong, "12ab56"):
        with pytest.raises(Unauthenticated, match="Wrong username, password or one-time code"):
            _device_sign_in(any_broker, otp)
    with pytest.raises(Unauthenticated, match="Wrong username, password or one-time code"):
        websessions.sign_in(any_broker, "alice", PASSWORD, IP, wrong)
    reasons = [e["details"]["reason"] for e in audit_rows(any_broker, "login.failure")]
    assert reasons == ["totp"] * 4
    assert wrong not in ledger_text(any_broker)


def test_wrong_codes_count_against_the_password_allowance(any_broker: Broker, fake_clock: FakeClock) -> None:
    secret = _enrolled(any_broker, fake_clock)
    for _ in range(10):  # PASSWORD_FAILURES: 10 per (name, IP) in 15 minutes
        with pytest.raises(Unauthenticated):
            websessions.sign_in(any_broker, "alice", PASSWORD, IP, "000000")
    with pytest.raises(RateLimited):
        websessions.sign_in(any_broker, "alice", PASSWORD, IP, _code(secret, fake_clock))


def test_a_code_is_good_once(any_broker: Broker, fake_clock: FakeClock) -> None:
    secret = _enrolled(any_broker, fake_clock)
    code = _code(secret, fake_clock)
    _device_sign_in(any_broker, code)
    with pytest.raises(Unauthenticated):
        _device_sign_in(any_broker, code)  # replayed within its step
    # Nor an earlier step's code once a later one was used.
    with pytest.raises(Unauthenticated):
        _device_sign_in(any_broker, _code(secret, fake_clock, -1))


@pytest.mark.parametrize(("steps", "accepted"), [(-1, True), (1, True), (-2, False), (2, False)])
def test_one_step_of_drift_either_way(
    any_broker: Broker, fake_clock: FakeClock, steps: int, accepted: bool
) -> None:
    secret = _enrolled(any_broker, fake_clock)
    fake_clock.advance(120)  # the confirming code's step is well in the past
    code = _code(secret, fake_clock, steps)
    if accepted:
        _device_sign_in(any_broker, code)
    else:
        with pytest.raises(Unauthenticated):
            _device_sign_in(any_broker, code)


def test_mfa_required_refuses_a_user_without_totp(any_broker: Broker, fake_clock: FakeClock) -> None:
    add_user(any_broker)
    with pytest.raises(Forbidden, match="no one-time codes set up") as refused:
        _device_sign_in(any_broker, mfa=True)
    assert "/inbox/mfa" in (refused.value.hint or "")
    [failure] = audit_rows(any_broker, "login.failure")
    assert failure["details"]["reason"] == "mfa_unavailable"
    [request] = audit_rows(any_broker, "device.request")
    assert request["details"]["mfa_required"] is True


def test_mfa_required_accepts_a_code(any_broker: Broker, fake_clock: FakeClock) -> None:
    secret = _enrolled(any_broker, fake_clock)
    signed = _device_sign_in(any_broker, _code(secret, fake_clock), mfa=True)
    assert device.decide(any_broker, signed.consent_token, True, IP).approved
    assert _mfa_at_of_device_login(any_broker, signed) == fake_clock.now()


def test_turning_off_needs_a_current_code(any_broker: Broker, fake_clock: FakeClock) -> None:
    secret = _enrolled(any_broker, fake_clock)
    with pytest.raises(Unauthenticated):
        totp.disable(any_broker, "alice", "000000", IP)
    totp.disable(any_broker, "alice", _code(secret, fake_clock), IP)
    _device_sign_in(any_broker)  # the password alone again
    with pytest.raises(InvalidRequest, match="not turned on"):
        totp.disable(any_broker, "alice", _code(secret, fake_clock), IP)
    [entry] = audit_rows(any_broker, "user.totp_disable")
    assert entry["details"]["by"] == "self"


def test_reset_removes_it_and_ends_the_sign_ins(any_broker: Broker, fake_clock: FakeClock) -> None:
    secret = _enrolled(any_broker, fake_clock)
    web = websessions.sign_in(any_broker, "alice", PASSWORD, IP, _code(secret, fake_clock))
    ended = totp.reset(any_broker, "alice", actor="admin:root")
    assert ended is not None and ended.session_ids == (web.session_id,)
    with pytest.raises(Unauthenticated):
        websessions.authenticate(any_broker, web.token)
    websessions.sign_in(any_broker, "alice", PASSWORD, IP)  # the password alone
    with pytest.raises(NotFound, match="no one-time codes"):
        totp.reset(any_broker, "alice", actor="admin:root")
    [entry] = audit_rows(any_broker, "user.totp_disable")
    assert (entry["actor"], entry["details"]["reason"], entry["details"]["sessions_revoked"]) == (
        "admin:root",
        "reset",
        1,
    )


def test_reset_may_keep_the_sessions(any_broker: Broker, fake_clock: FakeClock) -> None:
    secret = _enrolled(any_broker, fake_clock)
    web = websessions.sign_in(any_broker, "alice", PASSWORD, IP, _code(secret, fake_clock))
    assert totp.reset(any_broker, "alice", actor="admin:root", keep_sessions=True) is None
    assert websessions.authenticate(any_broker, web.token).name == "alice"


def test_a_secret_sealed_under_another_key_fails_closed(any_broker: Broker, fake_clock: FakeClock) -> None:
    secret = _enrolled(any_broker, fake_clock)
    with any_broker.transaction() as conn:
        other = conn.execute(sa.select(principals.c.id, principals.c.totp_secret)).one()
        # Another principal's sealed value (associated data differs) stands for a changed key.
        conn.execute(
            principals.update()
            .where(principals.c.id == other.id)
            .values(totp_secret=b"\0" * 12 + other.totp_secret[12:])
        )
    with pytest.raises(Unauthenticated):
        _device_sign_in(any_broker, _code(secret, fake_clock))


def test_admin_totp_enrol_list_and_reset(tmp_path: Path, sqlite_url: str) -> None:
    from access.broker.admin.main import app

    def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
        result = CliRunner().invoke(
            app, [*args, "--data-dir", str(tmp_path / "data"), "--database-url", sqlite_url], input=stdin
        )
        return result.exit_code, result.stdout, result.stderr

    assert run("users", "add", "alice", "--password-stdin", stdin=PASSWORD + "\n")[0] == 0
    code, out, err = run("users", "totp-enrol", "alice")
    assert code == 0, err
    uri = out.splitlines()[0]
    assert uri.startswith("otpauth://totp/") and "secret=" in uri
    assert "█" in out or "▀" in out  # the QR code, drawn in the terminal
    assert "confirm with a first code on /inbox/mfa" in err
    code, out, _ = run("users", "list")
    assert "TOTP" in out.splitlines()[0] and out.splitlines()[1].split()[-1] == "off"  # pending only
    code, out, _ = run("users", "list", "-o", "json")
    assert json.loads(out)[0]["totp"] is False
    code, _, err = run("users", "totp-reset", "alice")
    assert code == 0 and "removed the one-time codes of alice; 0 sign-in session(s) ended" in err, err
    code, _, err = run("users", "totp-reset", "alice")
    assert code == 8 and "alice has no one-time codes set up" in err, err
    code, _, err = run("users", "totp-enrol", "nobody")
    assert code == 8 and "no user named 'nobody'" in err


def test_users_list_shows_totp_on(broker: Broker, fake_clock: FakeClock) -> None:
    from access.broker.admin.identity import Output, _print_principals

    _enrolled(broker, fake_clock)
    add_user(broker, "bob")
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        _print_principals(broker, "user", Output.text)
    rows = [line.split() for line in out.getvalue().splitlines()[1:]]
    assert [(row[0], row[-1]) for row in rows] == [("alice", "on"), ("bob", "off")]
