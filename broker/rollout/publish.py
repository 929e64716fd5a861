"""Putting a policy in force: validate, record the version, end what it no longer allows.

Every path changes nothing unless the new policy is valid: it is validated before anything is
written, and the version row, its ``policy.reload`` entry and the grants it ends are one
transaction. A grant stays when the new policy would issue it now (``explain`` says ``auto``,
for some TTL): its service, scope and an ``auto`` rule for its owner (with the owner's groups
of today) still exist; or, for a grant that was approved, when the new policy would still let
it be had with approval. A request still waiting for review stays only while its own rule
exists, still asks for approval and still covers it (its reviewers are that rule's, in the
policy in force: a reviewer dropped there can no longer approve it); it is ended otherwise, also
when the new policy would issue it at once (the requester asks again). Everything else ends,
failing closed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.grants import lifecycle
from access.broker.grants.lifecycle import GrantEvent, GrantTx
from access.broker.policy import (
    Policy,
    PolicyError,
    Subject,
    UnknownScope,
    UnknownService,
    explain,
    policy_from_text,
)
from access.broker.policy.load import read_text
from access.broker.runtime import Broker
from access.broker.store import grants as grant_store
from access.broker.store import policy_versions as store
from access.broker.store import principals
from access.broker.store.grants import GrantRecord
from access.shared.models import GrantState

__all__ = ["Reloaded", "adopt_at_start", "apply_latest", "reload_file", "sha256_of"]

_MAX_PROBLEMS_AUDITED = 20


@dataclass(frozen=True)
class Reloaded:
    """What a reload did: the version in force, whether it is new (stored now, or taken up from
    the store by this broker), and the grants it ended."""

    version: int
    sha256: str
    source: str
    new: bool
    ended: tuple[str, ...]

    def summary(self) -> str:
        ended = f"; {len(self.ended)} grant(s) it no longer allows ended" if self.ended else ""
        if not self.new:
            return f"{self.source} is already in force (policy version {self.version}){ended}"
        return (
            f"policy version {self.version} in force (sha256 {self.sha256[:16]}…, from {self.source}){ended}"
        )


def sha256_of(text: str) -> str:
    """The SHA-256 (hex) of a policy's text, as recorded with its version."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def reload_file(broker: Broker, path: Path | str, actor: str) -> Reloaded:
    """Put the policy file at ``path`` in force on every replica (``policy reload``, SIGHUP).

    Audited either way: ``policy.reload`` (also when the file is the version already in force)
    or ``policy.refuse``.

    Raises:
        PolicyError: the file cannot be read or is invalid; it was refused (audited) and the
            policy in force stays.
        Unavailable: the database could not be reached; nothing changed.
    """
    source = str(path)
    try:
        text = read_text(path)
    except PolicyError as exc:
        _refuse(broker, source, None, exc, actor)
        raise
    try:
        policy = policy_from_text(text, source=source)
    except PolicyError as exc:
        _refuse(broker, source, sha256_of(text), exc, actor)
        raise
    return _publish(broker, policy, text, source, actor, audit_unchanged=True)


def adopt_at_start(broker: Broker, actor: str = "broker") -> Reloaded | None:
    """At ``serve``: put the configured file in force if it differs from the stored version in
    force, else take up the stored version (none stored and no file: the empty policy stays).

    Raises:
        PolicyError: the configured file cannot be read or is invalid (the broker does not start).
        Unavailable: the database could not be reached.
    """
    path = broker.settings.policy
    if path is None:
        return apply_latest(broker)
    text = read_text(path)
    policy = policy_from_text(text, source=str(path))
    return _publish(broker, policy, text, str(path), actor, audit_unchanged=False)


def apply_latest(broker: Broker) -> Reloaded | None:
    """Apply the newest stored version if it is newer than this broker's; None when it is not.

    A stored text that does not validate here (a replica older than the one that stored it) is
    refused once (``policy.refuse``) and the policy in force stays.

    Raises:
        Unavailable: the versions could not be read; the policy in force stays.
    """
    current = broker.policy.version
    with broker.transaction() as conn:
        number = store.latest_number(conn)
        if number is None or (current is not None and number <= current):
            return None
        found = store.latest(conn)
    assert found is not None  # a version is never deleted
    source = f"policy version {found.version} ({found.source})"
    try:
        policy = policy_from_text(found.text, source=found.source)
    except PolicyError as exc:
        _refuse(broker, source, found.sha256, exc, "broker", version=found.version)
        # Not tried again at every poll: this version is passed over, the old policy stays.
        broker.policy = replace(broker.policy, version=found.version)
        return None
    in_force = replace(policy, version=found.version, sha256=found.sha256)
    with lifecycle.transaction(broker) as tx:
        ended = _end_disallowed(tx, in_force, "broker")
    broker.policy = in_force
    return Reloaded(found.version, found.sha256, found.source, True, tuple(ended))  # new here


def _publish(
    broker: Broker, policy: Policy, text: str, source: str, actor: str, *, audit_unchanged: bool
) -> Reloaded:
    digest = sha256_of(text)
    with lifecycle.transaction(broker) as tx:
        latest = store.latest(tx.conn)
        new = latest is None or latest.sha256 != digest
        now = broker.clock.now()
        if new:
            version = store.insert(tx.conn, sha256=digest, source=source, text=text, at=now, by=actor)
        else:
            assert latest is not None
            version = latest.version
        in_force = replace(policy, version=version, sha256=digest)
        if new or audit_unchanged:
            # Before the ends it causes: the ledger reads as it happened.
            details = {
                "version": version,
                "sha256": digest,
                "source": source,
                "previous": None if latest is None else latest.version,
                "unchanged": not new,
            }
            ledger.append(
                tx.conn,
                broker.clock,
                actor=actor,
                action=Action.POLICY_RELOAD,
                target=f"policy:{version}",
                details=details,
            )
        ended = _end_disallowed(tx, in_force, actor)
    broker.policy = in_force
    return Reloaded(version, digest, source, new, tuple(ended))


def _refuse(
    broker: Broker,
    source: str,
    digest: str | None,
    exc: PolicyError,
    actor: str,
    *,
    version: int | None = None,
) -> None:
    # Field paths only: a message may quote a value from the file, and values stay out of the ledger.
    problems = [problem.where for problem in exc.problems[:_MAX_PROBLEMS_AUDITED]]
    details = {
        "source": source,
        "sha256": digest,
        "version": version,
        "problems": problems or ["unreadable or not YAML"],
    }
    with broker.transaction() as conn:
        ledger.append(
            conn, broker.clock, actor=actor, action=Action.POLICY_REFUSE, target="policy", details=details
        )


def _end_disallowed(tx: GrantTx, policy: Policy, actor: str) -> list[str]:
    """End (``grant.revoke``, reason ``policy``) every usable grant ``policy`` would not issue
    now, and every pending request it would no longer have reviewed under its rule."""
    now = tx.broker.clock.now()
    ended: list[str] = []
    groups: dict[str, Subject | None] = {}
    for record in [*grant_store.usable(tx.conn, now), *grant_store.pending(tx.conn, now)]:
        if record.principal_id not in groups:
            who = principals.by_id(tx.conn, record.principal_id)
            groups[record.principal_id] = None if who is None else Subject(who.name, who.kind, who.groups)
        subject = groups[record.principal_id]
        why = _why_not(policy, subject, record)
        if why is None:
            continue
        details = {
            "grant_id": record.id,
            "reason": "policy",
            "subject": record.subject,
            "scope": record.scope,
            "policy_version": policy.version,
            "why": why,
        }
        if lifecycle.apply(
            tx, record, GrantEvent.REVOKE, actor=actor, now=now, reason="policy", details=details
        ):
            ended.append(record.id)
    return ended


def _why_not(policy: Policy, subject: Subject | None, record: GrantRecord) -> str | None:
    """Why ``policy`` would not issue this grant (asked for with its reason) now, or would not
    have this pending request reviewed under its rule; None when it would."""
    if subject is None:
        return "its owner is not in the directory"
    try:
        found = explain(
            policy,
            subject,
            record.service,
            record.scope,
            reason=record.reason,
            break_glass=record.break_glass,
        )
    except (UnknownService, UnknownScope) as exc:
        return str(exc)
    if record.state == GrantState.PENDING:
        rule = policy.rule(record.rule) if record.rule else None
        if found.outcome == "auto":
            return f"{found.decision.reason}: it no longer needs approval; ask again"
        if found.outcome == "deny":
            return found.decision.reason
        if rule is None or rule.require != "approval":
            return f"rule {record.rule} no longer asks for approval"
        if not rule.matches(subject, policy.services[record.service], record.scope):
            return f"rule {record.rule} no longer covers {subject.name} {record.scope} on {record.service}"
        return None
    if found.outcome == "auto":
        return None
    if found.outcome == "approval":
        if record.requirement == "approval" and record.approved_at is not None:
            return None  # approved under a rule that asks for approval, and one still does
        return f"{found.decision.reason}, and the grant has no approval"
    return found.decision.reason
