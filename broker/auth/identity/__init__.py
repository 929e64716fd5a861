"""Identity: who the principals are and how they prove it.

``embedded``: users with passwords and service accounts with client secrets, stored as argon2id
hashes in our own database. Pipelines may also sign in as a service account with a CI identity
token (``auth.exchange``, ``auth.citrust``, ``auth.jwks``: they open sessions, so they live
beside ``auth.sessions``, not here), and people with their organisation's OpenID provider
(``auth.upstream``, which opens sessions too; it provisions users linked by issuer and subject).
``principals.source`` says where a principal comes from. ``directory`` holds what applies
whatever the source (listing, disabling and enabling, ending every session and grant of a
principal: offboarding). Identity may import the store and ``grants`` (to end a principal's
grants), never ``auth.sessions`` or ``auth.device``, which import it.
"""

from access.broker.auth.identity.directory import (
    SESSIONS_REVOKED,
    EndedSignIns,
    Revoked,
    disable_principal,
    enable_principal,
    find_upstream,
    link_upstream,
    list_principals,
    revoke_sessions,
)
from access.broker.auth.identity.embedded import (
    MAX_GROUPS,
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    check_client_secret,
    check_password,
    create_service_account,
    create_user,
    set_password,
)
from access.broker.store.principals import SERVICE_ACCOUNT, USER, PrincipalRecord

__all__ = [
    "MAX_GROUPS",
    "MAX_PASSWORD_LENGTH",
    "MIN_PASSWORD_LENGTH",
    "SERVICE_ACCOUNT",
    "SESSIONS_REVOKED",
    "USER",
    "EndedSignIns",
    "PrincipalRecord",
    "Revoked",
    "check_client_secret",
    "check_password",
    "create_service_account",
    "create_user",
    "disable_principal",
    "enable_principal",
    "find_upstream",
    "link_upstream",
    "list_principals",
    "revoke_sessions",
    "set_password",
]
