"""Token exchange (RFC 8693): a CI system's identity token for a service account's broker token.

The subject token must be a JWT from an issuer of ``ACCESS_BROKER_CI_ISSUERS``, signed by one of
its published keys (``auth.jwks``) with an algorithm accepted for it, with ``iss`` exactly the
issuer, ``aud`` containing its configured audience, and ``exp``, ``iat`` (and ``nbf`` if given)
holding by the broker's clock. Then the issuer's rules are tried in order (``auth.citrust``):
the first whose claims all match names the service account. The answer is one access token
(``access_token_ttl`` at most) and no refresh token, for a session of ``ci_session_ttl``: a
running ``access exec`` keeps its tunnel for the session, later commands need a new exchange.

The session does not end with the CI token: GitHub's live five minutes, too short for a
migration, and the CI token is spent once exchanged (as PyPI's trusted publishing and AWS's
``AssumeRoleWithWebIdentity`` give their own lifetime, not the source token's).

Every refusal is ``invalid_request`` (RFC 8693 section 2.2.2 says so for an unacceptable
subject token), audited ``token.exchange_refuse`` with the reason; when the token was valid but
matched no rule, with the claims that differed. The token itself is never written anywhere.
Failed exchanges count toward the per-address limit of failed logins. When the issuer's keys
cannot be fetched the exchange fails closed with ``temporarily_unavailable`` (503).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.auth import ratelimit
from access.broker.auth.citrust import CiIssuer, Mismatch, match_rule
from access.broker.auth.jwks import KeyUnavailable, UnknownKey
from access.broker.auth.sessions import TokenSet, start_session
from access.broker.auth.tokens import OAuthError
from access.broker.errors import RateLimited
from access.broker.runtime import Broker
from access.broker.store import principals
from access.broker.store.principals import SERVICE_ACCOUNT

__all__ = ["EXCHANGE_CLIENT_ID", "exchange_ci_token"]

EXCHANGE_CLIENT_ID = "token-exchange"
# The issuer's clock and ours may differ by this much (GitHub's tokens are valid from iat).
_EXP_LEEWAY = timedelta(seconds=30)
_IAT_SKEW = timedelta(seconds=60)
_REQUIRED = ["iss", "aud", "exp", "iat", "sub"]


class _Refused(Exception):
    """Why a CI token is refused: ``reason`` for the ledger, ``message`` for the client."""

    def __init__(self, reason: str, message: str, details: Mapping[str, object] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.details: dict[str, object] = dict(details or {})


def exchange_ci_token(broker: Broker, subject_token: str, client_ip: str) -> TokenSet:
    """Validate a CI identity token and open a short session for the service account it maps to.

    Raises:
        OAuthError: ``invalid_request`` (400) for a token that is malformed, from an untrusted
            issuer, badly signed, for another audience, expired, not yet valid, matching no
            rule, or mapping to a missing or disabled service account (audited
            ``token.exchange_refuse``); ``temporarily_unavailable`` (503) when the issuer's keys
            cannot be fetched, or (429) after too many failures from this address.
        Unavailable: the database could not be reached.
    """
    per_address = ratelimit.login_failures_per_address(broker)
    address_key = per_address.key(broker, client_ip)
    with broker.transaction() as conn:
        try:
            ratelimit.check(conn, broker.clock, per_address, address_key)
        except RateLimited as exc:
            raise OAuthError("temporarily_unavailable", f"{exc.message}: {exc.hint}", status=429) from exc
    try:
        issuer, claims = _verify(broker, subject_token)
        matched = match_rule(issuer, claims)
        if isinstance(matched, list):
            raise _no_rule(issuer, claims, matched)
        number, rule = matched
    except _Refused as refused:
        _record_refusal(broker, refused, per_address, address_key, client_ip)
        raise OAuthError("invalid_request", refused.message) from None
    except KeyUnavailable as exc:
        # Not audited as a refusal of the token: nothing is known of it, and the issuer is at fault.
        raise OAuthError(
            "temporarily_unavailable",
            f"the CI token cannot be checked now: {exc}; try again later",
            status=503,
        ) from None
    lifetime = broker.settings.ci_session_ttl
    base = {"issuer": issuer.issuer, "subject": str(claims["sub"])[:512], "rule": number}
    with broker.transaction() as conn:
        account = principals.by_name(conn, rule.service_account)
        problem = None
        if account is None or account.kind != SERVICE_ACCOUNT:
            problem = _Refused(
                "unknown_service_account",
                f"the CI token matches rule {number} of {issuer.issuer}, which names service account "
                f"{rule.service_account!r}: there is none (`access-broker service-accounts add`)",
            )
        elif account.disabled:
            problem = _Refused(
                "disabled", f"the service account {rule.service_account!r} is disabled: ask an administrator"
            )
        if account is None or problem is not None:
            tokens = None
        else:
            tokens = start_session(
                conn, broker, account, EXCHANGE_CLIENT_ID, lifetime=lifetime, refreshable=False
            )
            ledger.append(
                conn,
                broker.clock,
                actor=account.name,
                action=Action.TOKEN_EXCHANGE,
                target=f"principal:{account.name}",
                details={
                    **base,
                    "service_account": account.name,
                    "claims": {name: str(claims[name])[:512] for name in rule.claims},
                    "session_id": tokens.session_id,
                    "expires_in": tokens.expires_in,
                    "ip": client_ip,
                },
            )
    if tokens is None:
        assert problem is not None
        problem.details.update(base)
        _record_refusal(broker, problem, per_address, address_key, client_ip)
        raise OAuthError("invalid_request", problem.message)
    return tokens


def _record_refusal(
    broker: Broker, refused: _Refused, per_address: ratelimit.Limit, address_key: str, client_ip: str
) -> None:
    with broker.transaction() as conn:
        ratelimit.hit(conn, broker.clock, per_address, address_key)
        issuer = str(refused.details.get("issuer", "untrusted"))
        ledger.append(
            conn,
            broker.clock,
            actor="anonymous",
            action=Action.TOKEN_EXCHANGE_REFUSE,
            target=f"issuer:{issuer}",
            details={"reason": refused.reason, **refused.details, "ip": client_ip},
        )


def _no_rule(issuer: CiIssuer, claims: Mapping[str, Any], misses: list[Mismatch]) -> _Refused:
    first = misses[0]
    differing = ", ".join(f"{name}={value!r}" for name, value in first.claims.items())
    return _Refused(
        "no_rule_matched",
        f"no rule of {issuer.issuer} accepts this CI token (for rule 1, {first.service_account!r}, "
        f"it has {differing[:300]})",
        {
            "issuer": issuer.issuer,
            "subject": str(claims.get("sub"))[:512],
            "mismatches": [miss.to_audit() for miss in misses],
        },
    )


def _trusted(broker: Broker, iss: object) -> CiIssuer:
    for entry in broker.settings.ci_issuers:
        if entry.issuer == iss:
            return entry
    raise _Refused(
        "untrusted_issuer", "the CI token's issuer is not trusted by this broker (ACCESS_BROKER_CI_ISSUERS)"
    )


def _verify(broker: Broker, raw: str) -> tuple[CiIssuer, dict[str, Any]]:
    """The trusted issuer and verified claims of ``raw``.

    Raises:
        _Refused: anything wrong with the token.
        KeyUnavailable: the issuer's keys cannot be fetched.
    """
    try:
        header = jwt.get_unverified_header(raw)
        # Read unverified only to pick the issuer whose keys then verify everything.
        unverified = jwt.decode(raw, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise _Refused("malformed", "the subject token is not a JWT") from None
    issuer = _trusted(broker, unverified.get("iss"))
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str) or not (kid is None or isinstance(kid, str)):
        raise _Refused("malformed", "the CI token's header is malformed", {"issuer": issuer.issuer})
    try:
        key = broker.ci_keys.signing_key(issuer, kid, alg, broker.clock)
    except UnknownKey as exc:
        raise _Refused("bad_signature", str(exc), {"issuer": issuer.issuer}) from None
    try:
        claims: dict[str, Any] = jwt.decode(
            raw,
            key,
            algorithms=[alg],  # checked against the issuer's accepted ones above
            audience=issuer.audience,
            issuer=issuer.issuer,
            options={
                "require": _REQUIRED,
                # Checked below against broker.clock, not the host's.
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except jwt.InvalidAudienceError:
        raise _Refused(
            "wrong_audience",
            f"the CI token is not for this broker: ask the CI system for audience {issuer.audience!r}",
            {"issuer": issuer.issuer},
        ) from None
    except jwt.MissingRequiredClaimError as exc:
        raise _Refused(
            "malformed", f"the CI token lacks the {exc.claim!r} claim", {"issuer": issuer.issuer}
        ) from None
    except jwt.PyJWTError:
        raise _Refused(
            "bad_signature", "the CI token's signature is invalid", {"issuer": issuer.issuer}
        ) from None
    _check_times(broker, issuer, claims)
    return issuer, claims


def _check_times(broker: Broker, issuer: CiIssuer, claims: Mapping[str, Any]) -> None:
    where = {"issuer": issuer.issuer, "subject": str(claims.get("sub"))[:512]}
    try:
        expires_at = datetime.fromtimestamp(int(claims["exp"]), tz=UTC)
        issued_at = datetime.fromtimestamp(int(claims["iat"]), tz=UTC)
        not_before = None if "nbf" not in claims else datetime.fromtimestamp(int(claims["nbf"]), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        raise _Refused("malformed", "the CI token's times are malformed", where) from None
    now = broker.clock.now()
    if expires_at + _EXP_LEEWAY <= now:
        raise _Refused("expired", "the CI token has expired: request a fresh one in the job", where)
    if issued_at > now + _IAT_SKEW:
        raise _Refused("not_yet_valid", "the CI token was issued in the future (check the clocks)", where)
    if not_before is not None and not_before > now + _IAT_SKEW:
        raise _Refused("not_yet_valid", "the CI token is not valid yet", where)
