"""Per-grant identities of dynamic services (issue 10): when to make them, when to end them.

``lifecycle`` makes a grant's identity once the grant is issued and ends it when the grant ends
(the ``grant.ended`` outbox row); ``reconcile`` makes the targets and the store agree
(``ReconcileLoop``: ends what is left over, makes what a crash left unmade); ``logins`` hands
the tunnel the login of a grant (``identity_login``) and keeps a Redis identity's connection
limit (``check_connection_limit``); ``sealing`` encrypts the passwords the store keeps (and, for
``tunnel.cancels``, the targets' cancel keys); ``targets`` builds a service's ``Provisioner``
from the policy.

It sits between ``provision`` (which talks to targets and may not touch the store) and the
store. May import: audit, errors, keys, loops, policy, provision, runtime (types), store,
wire.base (the ``TargetLogin`` type).
"""
