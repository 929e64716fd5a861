"""The policy in force, the same on every replica: reloads, refusals, and the grants a new policy ends.

- ``publish.py``: put a policy file in force (``access-broker policy reload``, SIGHUP, a
  ``serve`` started with a file that differs from the version in force): validated first, a bad
  file is refused (``policy.refuse``) and nothing changes; a good one becomes a new row of
  ``policy_versions`` (``policy.reload``), and in the same transaction every active grant the
  new policy no longer allows ends (``grant.revoke``, reason ``policy``);
- ``watch.py``: ``PolicyWatch``, the loop by which every replica notices a newer version within
  ``policy_watch_interval`` and applies it (ending, once more, what the new one forbids: a
  grant another replica issued under the old version meanwhile).

The store's version is the truth: a replica applies the stored text, not its own file, so every
replica runs the same version (recorded as ``policy_version`` in ``grant.issue``). Ends go
through ``grants.lifecycle``, so tunnels are cut on every replica as for a revoke.

Imports the policy room, the grants' lifecycle, the ledger and the store; nothing imports this
but the commands, startup and the app's loops.
"""

from __future__ import annotations

from access.broker.rollout.publish import (
    Reloaded,
    adopt_at_start,
    apply_latest,
    reload_file,
    sha256_of,
)
from access.broker.rollout.watch import PolicyWatch, reload_on_signal

__all__ = [
    "PolicyWatch",
    "Reloaded",
    "adopt_at_start",
    "apply_latest",
    "reload_file",
    "reload_on_signal",
    "sha256_of",
]
