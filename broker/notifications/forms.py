"""The two bodies a notice is sent as: Slack-compatible blocks, and plain JSON. Pure.

Everything a client wrote (a reason, a comment) and every name is escaped for Slack's mrkdwn
(``&``, ``<``, ``>``), so a reason cannot ping ``<!channel>``, forge a link or break the
message. The JSON form carries the values as they are: JSON encoding is its escaping.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from access.broker.notifications.kinds import Notice

__all__ = ["INBOX_PATH", "mrkdwn", "render", "render_json", "render_slack"]

# The approvals inbox page (web/inbox.py, docs/inbox.md); Slack messages link to it.
INBOX_PATH = "/inbox"

_HEADLINES: Mapping[str, str] = {
    Notice.GRANT_REQUESTED: ":hourglass: {subject} requests {scope} on {service} for {ttl}",
    Notice.GRANT_ISSUED: ":white_check_mark: {subject} was granted {scope} on {service} for {ttl}",
    Notice.GRANT_APPROVED: ":thumbsup: {actor} approved {subject}'s request for {scope} on {service}",
    Notice.GRANT_DENIED: ":no_entry: {subject} was denied {scope} on {service}",
    Notice.GRANT_EXPIRED: ":hourglass_flowing_sand: {subject}'s {scope} grant on {service} expired",
    Notice.GRANT_EXTENDED: ":stopwatch: {subject} extended their {scope} grant on {service} to {expires}",
    Notice.GRANT_REVOKED: ":stop_sign: {subject}'s {scope} grant on {service} was ended by {actor}",
    Notice.ACCESS_LOCKED: ":lock: {actor} locked {target}",
    Notice.ACCESS_UNLOCKED: ":unlock: {actor} unlocked {target}",
    Notice.BREAK_GLASS: ":rotating_light: BREAK-GLASS: {subject} took {scope} on {service} for {ttl}",
}


def mrkdwn(text: object) -> str:
    """``text`` safe inside Slack mrkdwn: the three characters Slack gives meaning to, escaped."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render(form: Literal["slack", "json"], notice: Mapping[str, Any], base_url: str) -> bytes:
    """The body of ``notice`` (an outbox row's) in ``form``, as sent."""
    body = render_slack(notice, base_url) if form == "slack" else render_json(notice, base_url)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def render_json(notice: Mapping[str, Any], base_url: str) -> dict[str, Any]:
    """``{"event", "id", "at", "actor", "grant", "details", "broker", "inbox"}``."""
    return {
        "event": notice["event"],
        "id": notice["id"],
        "at": notice["at"],
        "actor": notice["actor"],
        "grant": notice.get("grant"),
        "details": dict(notice.get("details") or {}),
        "broker": base_url,
        "inbox": base_url + INBOX_PATH,
    }


def render_slack(notice: Mapping[str, Any], base_url: str) -> dict[str, Any]:
    """``{"text": headline, "blocks": [headline, facts, link]}`` for a Slack incoming webhook."""
    grant: Mapping[str, Any] = notice.get("grant") or {}
    details: Mapping[str, Any] = notice.get("details") or {}
    headline = _headline(notice, grant, details)
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": headline}}]
    facts = _facts(grant, details)
    if facts:
        blocks.append({"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in facts]})
    link = f"<{mrkdwn(base_url + INBOX_PATH)}|Open the access inbox>"
    context = f"{link} · `{mrkdwn(notice['event'])}` · {mrkdwn(notice['at'])}"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return {"text": headline, "blocks": blocks}


def _headline(notice: Mapping[str, Any], grant: Mapping[str, Any], details: Mapping[str, Any]) -> str:
    values = {
        "actor": notice.get("actor"),
        "subject": grant.get("subject"),
        "scope": grant.get("scope"),
        "service": grant.get("service"),
        "ttl": grant.get("ttl"),
        "expires": grant.get("expires_at"),
        "target": details.get("target"),
    }
    template = _HEADLINES.get(notice["event"], "{event}")
    bold = {key: f"*{mrkdwn(value)}*" for key, value in values.items()}
    return template.format(event=mrkdwn(notice["event"]), **bold)


def _facts(grant: Mapping[str, Any], details: Mapping[str, Any]) -> list[str]:
    """Who, service, scope, TTL, reason, grant id, and why (an end, a denial): Slack ``fields``."""
    rows = [
        ("Who", grant.get("subject")),
        ("Service", grant.get("service")),
        ("Scope", grant.get("scope")),
        ("TTL", grant.get("ttl")),
        ("Reason", grant.get("reason") or "(none given)" if grant else None),
        ("Grant", grant.get("id")),
        ("Why", details.get("why")),
        ("Was to end", details.get("old_expires_at")),
        ("Comment", details.get("comment")),
        ("Reason", details.get("reason")),
        ("Until", details.get("until")),
        ("Grants ended", ", ".join(details["grants_ended"]) if details.get("grants_ended") else None),
    ]
    # At most 10 fields and 2000 characters each (Slack's limits); reasons are at most 500.
    return [f"*{label}*\n{mrkdwn(str(value)[:1000])}" for label, value in rows if value][:10]
