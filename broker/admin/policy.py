"""``access-broker policy``: check a policy file, explain a decision, run a policy's tests, and
reload the policy of every replica.

Exit codes: 0 fine (a valid file; every case passed; a decision explained, whatever it is; a
policy put in force); 1 ``policy test`` found mismatches; 2 bad usage or an invalid file (the
error names file, line and field; ``reload`` refused it and the old policy stays).
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from access.broker.admin.common import (
    DatabaseUrl,
    DataDir,
    admin_broker,
    build_settings,
    check_output,
    fail,
    fail_lines,
    say,
    setting_help,
)
from access.broker.policy import (
    ApprovalRule,
    Candidates,
    Policy,
    PolicyError,
    Rule,
    ServiceConfig,
    Subject,
    Subjects,
    UnknownScope,
    UnknownService,
    candidates,
    explain,
    load_cases,
    load_policy,
    run_cases,
)
from access.broker.policy.labels import describe as describe_labels
from access.shared import terminal
from access.shared.clihelp import examples
from access.shared.durations import DurationError, format_duration, parse_duration

if TYPE_CHECKING:
    from access.broker.store.principals import PrincipalRecord

__all__ = ["policy_app"]

policy_app = typer.Typer(
    help="Check the policy file, explain a decision, run the policy's tests, reload it on every replica.",
    epilog=examples(
        "access-broker policy check policy.yaml",
        "access-broker policy explain --user alice --group sre --service svc-payments --scope read",
        "access-broker policy test policy-tests.yaml",
        "access-broker policy reload policy.yaml",
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


Output = Annotated[str, typer.Option("-o", "--output", help="text or json")]
PolicyFileOpt = Annotated[
    Path | None,
    typer.Option("--policy", envvar="ACCESS_BROKER_POLICY", show_envvar=False, help=setting_help("policy")),
]


def _load(file: Path) -> Policy:
    try:
        return load_policy(file)
    except PolicyError as exc:
        raise _invalid(exc) from exc


def _invalid(
    exc: PolicyError, then: str | None = None, hint: str = "see docs/policy.md for the format"
) -> typer.Exit:
    """Exit 2 listing every problem on its own line (each is escaped: it quotes the file)."""
    lines = str(exc).splitlines() or ["invalid policy"]
    return fail_lines([*lines, *([then] if then else [])], hint, code=2)


@policy_app.command(
    epilog=examples(
        "access-broker policy check policy.yaml", "access-broker policy check policy.yaml -o json"
    )
)
def check(
    file: Annotated[Path, typer.Argument(help="Policy YAML file")],
    output: Output = "text",
) -> None:
    """Validate FILE and summarise its services, rules and roles; exit 2 with the error if it is
    invalid. Warnings (a label selector that selects no service) do not fail the check."""
    check_output(output)
    policy = _load(file)
    warnings = [problem.located(str(file)) for problem in policy.warnings]
    if output == "json":
        document = {
            "ok": True,
            "services": [_service_summary(svc) for svc in policy.services.values()],
            "rules": [_rule_summary(rule) for rule in policy.rules],
            "roles": [
                {
                    "name": role.name,
                    "members": _subjects(role.members),
                    "rules": [r.name for r in role.compile()],
                }
                for role in policy.roles
            ],
            "warnings": warnings,
        }
        typer.echo(json.dumps(document, indent=2))
        return
    counts = f"{len(policy.services)} service(s), {len(policy.rules)} rule(s)"
    if policy.roles:
        counts += f" ({len(policy.roles)} role(s))"
    say(f"{file}: OK, {counts}")
    for svc in policy.services.values():
        scopes = ", ".join(svc.scopes)
        labels = f", labels {describe_labels(svc.labels)}" if svc.labels else ""
        at = f"{svc.kind} at {svc.target}"
        say(f"  service {svc.name} ({at}): {scopes}, max {format_duration(svc.max_ttl)}{labels}")
    for rule in policy.rules:
        named = [(label, getattr(rule.subjects, key)) for key, label in _SUBJECT_LABELS]
        who = "; ".join(f"{label} {', '.join(sorted(names))}" for label, names in named if names)
        ttl = "" if rule.max_ttl is None else f", max {format_duration(rule.max_ttl)}"
        selected = [*rule.services, *([f"labels {describe_labels(rule.labels)}"] if rule.labels else [])]
        what = f"{', '.join(selected)} ({', '.join(rule.scopes)}){ttl}"
        terms = "break-glass" if rule.break_glass else rule.require
        say(f"  rule {rule.name} [{terms}]: {who} -> {what}")
    for line in warnings:
        say(f"warning: {line}", err=True)


_SUBJECT_LABELS = (("groups", "group"), ("users", "user"), ("service_accounts", "service account"))


def _subjects(subjects: Subjects) -> dict[str, list[str]]:
    return {
        "groups": sorted(subjects.groups),
        "users": sorted(subjects.users),
        "service_accounts": sorted(subjects.service_accounts),
    }


def _service_summary(svc: ServiceConfig) -> dict[str, object]:
    return {
        "name": svc.name,
        "kind": svc.kind,
        "target": svc.target,
        "labels": dict(svc.labels),
        "scopes": list(svc.scopes),
        "max_ttl": format_duration(svc.max_ttl),
    }


def _rule_summary(rule: Rule) -> dict[str, object]:
    return {
        "name": rule.name,
        "require": rule.require,
        "services": list(rule.services),
        "labels": dict(rule.labels),
        "scopes": list(rule.scopes),
        "max_ttl": None if rule.max_ttl is None else format_duration(rule.max_ttl),
        "break_glass": rule.break_glass,
        "subjects": _subjects(rule.subjects),
    }


@policy_app.command(
    "explain",
    epilog=examples(
        "access-broker policy explain --user alice --group sre --service svc-payments --scope read",
        "access-broker policy explain --service-account deploy-bot --group ci --service svc-payments "
        "--scope write --ttl 2h -o json",
        "access-broker policy explain --user carol --group sre --service svc-payments --scope write "
        "--break-glass --reason INC-4712",
    ),
)
def explain_decision(
    service: Annotated[str, typer.Option("--service", help="The service asked for")],
    scope: Annotated[str, typer.Option("--scope", help="The scope asked for")],
    user: Annotated[str | None, typer.Option("--user", help="Who asks: a user")] = None,
    service_account: Annotated[
        str | None, typer.Option("--service-account", help="Who asks: a service account")
    ] = None,
    group: Annotated[
        list[str] | None, typer.Option("--group", "-g", help="A group of theirs (repeatable)")
    ] = None,
    ttl: Annotated[
        str | None, typer.Option("--ttl", help="For this long (default: whatever the TTL)")
    ] = None,
    reason: Annotated[
        str | None, typer.Option("--reason", "-r", help="With this reason (default: none)")
    ] = None,
    break_glass: Annotated[
        bool, typer.Option("--break-glass", help="As `access request --break-glass` asks")
    ] = False,
    mfa: Annotated[
        str,
        typer.Option(
            "--mfa",
            help="Their sign-in's second factor: 'now' (default), 'none', or how long ago (20m)",
        ),
    ] = "now",
    policy_file: PolicyFileOpt = None,
    output: Output = "text",
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Say what the policy decides for one request, the rule that decides it, its maximum TTL and
    who could approve it (the rule's reviewers, and the directory's users who are, if there is one)."""
    check_output(output)
    if (user is None) == (service_account is None):
        raise fail("name who asks: --user NAME or --service-account NAME (one of them)", code=2)
    if policy_file is None:
        raise fail("no policy file", hint="give --policy FILE or set ACCESS_BROKER_POLICY", code=2)
    wanted = None
    if ttl is not None:
        try:
            wanted = parse_duration(ttl)
        except DurationError as exc:
            raise fail(str(exc), hint="write the ttl like 45s, 30m or 1h30m", code=2) from exc
    second_factor = _second_factor(mfa)
    policy = _load(policy_file)
    if user is not None:
        subject = Subject(user, "user", tuple(sorted(set(group or []))))
    else:
        subject = Subject(service_account or "", "service_account", tuple(sorted(set(group or []))))
    try:
        found = explain(
            policy,
            subject,
            service,
            scope,
            wanted,
            reason,
            break_glass=break_glass,
            second_factor=second_factor,
        )
    except (UnknownService, UnknownScope) as exc:
        raise fail(str(exc), hint=f"`access-broker policy check {policy_file}` lists them", code=2) from exc
    approval = found.decision.approval if found.outcome == "approval" else None
    where = None
    if approval is not None:
        people, where = _directory(data_dir, database_url)
        if people is not None:
            found = replace(found, candidates=candidates(approval, people, subject))
    if output == "json":
        typer.echo(json.dumps(found.as_dict(), indent=2))
        return
    decision = found.decision
    say(f"decision: {found.outcome}")
    say(f"rule:     {decision.rule or '(none: denied by default)'}")
    if decision.max_ttl is not None:
        say(f"max ttl:  {format_duration(decision.max_ttl)}")
    if decision.mfa is not None:
        say(f"mfa:      a sign-in with a second factor within {format_duration(decision.mfa)}")
    say(f"why:      {decision.reason}")
    if approval is not None:
        _say_reviewers(approval, found.candidates, subject, where)


def _second_factor(text: str) -> timedelta | None:
    """``--mfa``: now -> 0, none -> None, a duration -> that long ago."""
    if text == "now":
        return timedelta(0)
    if text == "none":
        return None
    try:
        return parse_duration(text)
    except DurationError as exc:
        raise fail(
            f"--mfa {text[:40]!r}: {exc}", hint="give now, none, or how long ago (20m)", code=2
        ) from exc


def _directory(data_dir: Path | None, database_url: str | None) -> tuple[list[PrincipalRecord] | None, str]:
    """The enabled principals of the broker's directory, and where it is; None when there is no
    directory to read (no database configured and none in the data directory: explain must not
    create one)."""
    from access.broker.auth import identity

    settings = build_settings(data_dir=data_dir, database_url=database_url)
    if settings.database_url is None:
        path = settings.data_dir / "broker.db"
        if not path.exists():
            return None, str(path)
    with admin_broker(data_dir, database_url, without_policy=True) as broker:
        people = [p for p in identity.list_principals(broker) if not p.disabled]
    return people, "the directory"


def _say_reviewers(
    approval: ApprovalRule, found: Candidates | None, subject: Subject, where: str | None
) -> None:
    say(f"approval: {approval.describe()}{approval.describe_mfa()}, within {format_duration(approval.wait)}")
    if found is None:
        say(f"  (reviewers not listed: no directory at {where}; give --data-dir or --database-url)")
        return
    for clause, people in zip(approval.reviewers, found.people, strict=True):
        names = ", ".join(terminal.name(name) for name in people) or "nobody in the directory"
        say(f"  {clause.describe()}: {names}")
    if not found.enough:
        who = terminal.name(subject.name)
        say(f"  cannot be approved now: too few reviewers in the directory ({who}, who asks, never counts)")


@policy_app.command(
    "test",
    epilog=examples(
        "access-broker policy test policy-tests.yaml",
        "access-broker policy test policy-tests.yaml --policy staging/policy.yaml",
    ),
)
def test_cases(
    file: Annotated[Path, typer.Argument(help="YAML table of expected decisions (docs/policy.md)")],
    policy_file: Annotated[
        Path | None,
        typer.Option("--policy", help="The policy to test (default: the file's policy:, beside it)"),
    ] = None,
) -> None:
    """Run a policy's tests: exit 1 naming each case whose decision is not the expected one."""
    try:
        cases, lines = load_cases(file)
    except PolicyError as exc:
        raise _invalid(exc, hint='see docs/policy.md, "Testing a policy"') from exc
    if policy_file is None:
        if cases.policy is None:
            raise fail(f"{file} names no policy", hint="add policy: FILE to it, or give --policy", code=2)
        policy_file = file.parent / cases.policy
    policy = _load(policy_file)
    mismatches = run_cases(policy, cases, lines)
    for mismatch in mismatches:
        at = f"{file}:{mismatch.line}" if mismatch.line is not None else str(file)
        say(f"FAIL {at}: cases[{mismatch.index}]: {mismatch.message}", err=True)
    total = len(cases.cases)
    if mismatches:
        say(f"{len(mismatches)} of {total} case(s) failed against {policy_file}", err=True)
        raise typer.Exit(1)
    say(f"{total} case(s) passed against {policy_file}")


@policy_app.command(
    "reload",
    epilog=examples(
        "access-broker policy reload                 # the file of ACCESS_BROKER_POLICY",
        "access-broker policy reload /etc/access/policy.yaml --database-url postgresql://db/access",
    ),
)
def reload(
    file: Annotated[
        Path | None,
        typer.Argument(help="Policy YAML file (default: ACCESS_BROKER_POLICY)", show_default=False),
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Put FILE in force on every replica (each applies it within its poll interval) and end the
    grants it no longer allows; a file that fails validation is refused and the old policy stays."""
    from access.broker.admin.identity import admin_actor
    from access.broker.rollout import reload_file

    with admin_broker(data_dir, database_url, without_policy=True) as broker:
        path = file or broker.settings.policy
        if path is None:
            raise fail("no policy file", hint="give FILE or set ACCESS_BROKER_POLICY", code=2)
        try:
            done = reload_file(broker, path, admin_actor())
        except PolicyError as exc:
            raise _invalid(exc, then="refused: the policy in force stays") from exc
    say(done.summary(), err=True)
    for grant_id in done.ended:
        say(f"  ended {grant_id}", err=True)
