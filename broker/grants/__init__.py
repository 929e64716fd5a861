"""The grant lifecycle: request, decide, issue, end; expiry.

``lifecycle`` holds the states, the transition table and the one function that applies a
transition (store, audit, outbox in one transaction; events after the commit). ``requests``
decides requests by the (pure) policy; ``approvals`` takes reviewers' votes on the requests that
need them (``reviews`` says where one stands and who may review it); ``extend`` gives an active
grant more time under its rule's maximum (no transition: the grant stays active); ``revoke``
ends grants early; ``expiry`` ends them on time; ``queries`` reads them (lists, visibility, the
tunnel's checks). SQL lives in
``access.broker.store.grants``; this package imports no table.

May import: audit, auth.principal (auth.tokens lazily), events, locks.guard (the lock check of
requests and tunnels), policy, runtime, store.
"""

from access.broker.grants.approvals import approve, deny, pending_for
from access.broker.grants.expiry import EXPIRY_INTERVAL, ExpiryLoop, expire_due
from access.broker.grants.extend import extend_grant
from access.broker.grants.lifecycle import GrantEvent, IllegalTransition, grant_target
from access.broker.grants.queries import (
    NotYours,
    TunnelGrant,
    effective_state,
    get_grant,
    grant_state,
    list_break_glass,
    list_grants,
    open_connection,
    open_for_tunnel,
    watched_grants,
)
from access.broker.grants.requests import request_grant, request_grant_for
from access.broker.grants.revoke import EndedGrants, end_grants_for_principal, revoke_grant

__all__ = [
    "EXPIRY_INTERVAL",
    "EndedGrants",
    "ExpiryLoop",
    "GrantEvent",
    "IllegalTransition",
    "NotYours",
    "TunnelGrant",
    "approve",
    "deny",
    "effective_state",
    "end_grants_for_principal",
    "expire_due",
    "extend_grant",
    "get_grant",
    "grant_state",
    "grant_target",
    "list_break_glass",
    "list_grants",
    "open_connection",
    "open_for_tunnel",
    "pending_for",
    "request_grant",
    "request_grant_for",
    "revoke_grant",
    "watched_grants",
]
