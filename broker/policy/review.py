"""Counting approvals against a rule's reviewers. Pure: no I/O, no clock.

A rule's ``approval.reviewers`` is an AND of clauses ("2 of group:leads and 1 of
group:security"). Each approval counts for one clause only, however many groups its reviewer is
in: a lead who is also in security cannot satisfy both clauses alone. So the count is an
assignment of approvers to clauses, found as a maximum bipartite matching (each clause has
``count`` seats); the request is approved when every seat is filled.

Who may not approve (the requester, the owner of a requesting service account, a service account
the requester owns) is decided by the caller, which knows the owners; ``tally`` counts what it is
given, once per name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from access.broker.policy.model import ApprovalRule, SubjectLike

__all__ = ["Tally", "tally"]


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
