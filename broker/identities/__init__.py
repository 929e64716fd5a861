"""Per-grant identities of dynamic services (issue 10): when to make them, when to end them.

``lifecycle`` makes a grant's identity once the grant is issued, ends it when the grant ends (the
``grant.ended`` outbox row) and reconciles the targets with the store (``ReconcileLoop``);
``logins`` hands the tunnel the login of a grant (``identity_login``); ``sealing`` encrypts the
passwords the store keeps (and, for ``tunnel.cancels``, the targets' cancel keys); ``targets``
builds a service's ``Provisioner`` from the policy.

It sits between ``provision`` (which talks to targets and may not touch the store) and the
store. May import: audit, errors, keys, loops, policy, provision, runtime (types), store,
wire.base (the ``TargetLogin`` type).
"""
