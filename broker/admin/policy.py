"""``access-broker policy``: check a policy file before the broker loads it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from access.broker.admin.common import fail, say
from access.broker.policy import PolicyError, load_policy
from access.shared.clihelp import examples
from access.shared.durations import format_duration

__all__ = ["policy_app"]

policy_app = typer.Typer(
    help="Check the policy file (services, rules, audit readers).",
    epilog=examples("access-broker policy check policy.yaml"),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@policy_app.command(
    epilog=examples(
        "access-broker policy check policy.yaml", "access-broker policy check policy.yaml -o json"
    )
)
def check(
    file: Annotated[Path, typer.Argument(help="Policy YAML file")],
    output: Annotated[str, typer.Option("-o", "--output", help="text or json")] = "text",
) -> None:
    """Validate FILE and summarise its services and rules; exit 2 with the error if it is invalid."""
    if output not in ("text", "json"):
        raise fail(f"unknown output format {output!r}: use text or json", code=2)
    try:
        policy = load_policy(file)
    except PolicyError as exc:
        raise fail(str(exc), hint="see docs/policy.md for the format", code=2) from exc
    services = [
        {
            "name": svc.name,
            "kind": svc.kind,
            "target": svc.target,
            "scopes": list(svc.scopes),
            "max_ttl": format_duration(svc.max_ttl),
        }
        for svc in policy.services.values()
    ]
    rules = [
        {
            "name": rule.name,
            "require": rule.require,
            "services": list(rule.services),
            "scopes": list(rule.scopes),
            "max_ttl": None if rule.max_ttl is None else format_duration(rule.max_ttl),
            "subjects": {
                "groups": sorted(rule.subjects.groups),
                "users": sorted(rule.subjects.users),
                "service_accounts": sorted(rule.subjects.service_accounts),
            },
        }
        for rule in policy.rules
    ]
    if output == "json":
        typer.echo(json.dumps({"ok": True, "services": services, "rules": rules}, indent=2))
        return
    say(f"{file}: OK, {len(services)} service(s), {len(rules)} rule(s)")
    for svc in policy.services.values():
        scopes = ", ".join(svc.scopes)
        say(
            f"  service {svc.name} ({svc.kind} at {svc.target}): {scopes}, max {format_duration(svc.max_ttl)}"
        )
    for rule in policy.rules:
        subjects = rule.subjects
        named = [
            ("group", subjects.groups),
            ("user", subjects.users),
            ("service account", subjects.service_accounts),
        ]
        who = "; ".join(f"{label} {', '.join(sorted(names))}" for label, names in named if names)
        ttl = "" if rule.max_ttl is None else f", max {format_duration(rule.max_ttl)}"
        what = f"{', '.join(rule.services)} ({', '.join(rule.scopes)}){ttl}"
        say(f"  rule {rule.name} [{rule.require}]: {who} -> {what}")
