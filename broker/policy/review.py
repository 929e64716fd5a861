"""Counting approvals against a rule's reviewers. Pure: no I/O, no clock.

A rule's ``approval.reviewers`` is an AND of clauses ("2 of group:leads and 1 of
group:security"). Each approval counts for one clause only, however many groups its reviewer is
in: a lead who is also in security cannot satisfy both clauses alone. So the count is an
assignment of approvers to clauses, found as a maximum bipartite matching (each clause has
``count`` seats); the request is approved when every seat is filled.

Who may not approve (the requester, the owner of a requesting service account, a service account
the requester owns) is decided by the caller, which knows the owners; ``tally`` counts what it is
given, once per name.

``candidates`` says who could approve a request now (``policy explain``), from the directory it
is given; ``parse_terms`` reads a rule's reviewers as ``ApprovalRule.describe`` writes them
(``policy test`` cases may expect them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from access.broker.policy.model import ApprovalRule, SubjectLike

__all__ = ["Candidates", "Tally", "candidates", "parse_terms", "tally", "terms"]


@dataclass(frozen=True)
class Tally:
    """How far a request's approvals go: per clause, whose approval counts there and how many are
    still needed. ``met`` when none are."""

    counted: tuple[tuple[str, ...], ...]
    missing: tuple[int, ...]

    @property
    def met(self) -> bool:
        return not any(self.missing)


def tally(rule: ApprovalRule, approvers: Sequence[SubjectLike]) -> Tally:
    """Assign ``approvers`` (in the order they approved) to the clauses of ``rule`` so that as
    many seats as possible are filled; an approver who matches no clause counts nowhere."""
    seen: set[str] = set()
    people = []
    for who in approvers:
        if who.name not in seen:
            seen.add(who.name)
            people.append(who)
    # Seats: (clause, k) for k < count. Augmenting paths (Kuhn's algorithm): tiny inputs.
    seats = [(c, k) for c, clause in enumerate(rule.reviewers) for k in range(clause.count)]
    fits = [[s for s, (c, _) in enumerate(seats) if rule.reviewers[c].match(who)] for who in people]
    holder: dict[int, int] = {}  # seat -> person

    def place(person: int, tried: set[int]) -> bool:
        for seat in fits[person]:
            if seat in tried:
                continue
            tried.add(seat)
            if seat not in holder or place(holder[seat], tried):
                holder[seat] = person
                return True
        return False

    for person in range(len(people)):
        place(person, set())
    counted: list[list[str]] = [[] for _ in rule.reviewers]
    for seat, person in sorted(holder.items(), key=lambda item: item[1]):  # in approval order
        counted[seats[seat][0]].append(people[person].name)
    missing = tuple(clause.count - len(counted[c]) for c, clause in enumerate(rule.reviewers))
    return Tally(tuple(tuple(names) for names in counted), missing)


@dataclass(frozen=True)
class Candidates:
    """Who could approve a request now: per clause of its rule, the directory's users that clause
    names, not counting the requester. ``enough`` when they could meet every clause, each counted
    once (the same matching as ``tally``)."""

    rule: ApprovalRule
    people: tuple[tuple[str, ...], ...]
    enough: bool


def candidates(rule: ApprovalRule, directory: Iterable[SubjectLike], requester: SubjectLike) -> Candidates:
    """The reviewers of ``rule`` among ``directory`` (enabled principals; the caller leaves out
    disabled ones), for a request by ``requester``: nobody approves their own request."""
    people = [who for who in directory if who.kind == "user" and who.name != requester.name]
    per_clause = tuple(
        tuple(sorted(who.name for who in people if clause.match(who))) for clause in rule.reviewers
    )
    return Candidates(rule, per_clause, tally(rule, people).met)


_CLAUSE = re.compile(r"^\s*(\d+)\s+of\s+(.+?)\s*$")
_NAMED = re.compile(r"^(group|user):(\S+)$")


def parse_terms(text: str) -> tuple[tuple[int, frozenset[str]], ...]:
    """``2 of group:leads and 1 of group:security, user:carol`` as sorted ``(count, names)``
    clauses, the form ``terms`` gives a rule, so that expectations compare whatever their order.

    Raises:
        ValueError: not written like that.
    """
    clauses = []
    for part in text.split(" and "):
        found = _CLAUSE.match(part)
        names = [] if found is None else [name.strip() for name in found.group(2).split(",")]
        if found is None or not all(_NAMED.match(name) for name in names):
            raise ValueError(
                f"write reviewers like '2 of group:leads and 1 of group:security, user:carol', got {text!r}"
            )
        clauses.append((int(found.group(1)), frozenset(names)))
    return tuple(sorted(clauses, key=lambda clause: (clause[0], sorted(clause[1]))))


def terms(rule: ApprovalRule) -> tuple[tuple[int, frozenset[str]], ...]:
    """The clauses of ``rule`` in ``parse_terms``' form."""
    return parse_terms(rule.describe())
