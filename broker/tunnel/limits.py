"""What one broker process lets its tunnels use: tunnels and channels per user, buffered bytes.

One ``TunnelLimits`` per broker object (``limits_for``), beside the registry. Counts are per
principal (a person or a service account, over all their sign-in sessions) and per process:
each replica enforces its own. The buffered-bytes ``Budget`` is shared by every tunnel of the
process; ``shared.mux`` keeps it up to date and stalls the tunnel that would pass it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from access.broker.perbroker import PerBroker
from access.shared.mux import Budget

if TYPE_CHECKING:
    from access.broker.runtime import Broker

__all__ = ["TunnelLimits", "limits_for"]


class TunnelLimits:
    def __init__(self, broker: Broker) -> None:
        settings = broker.settings
        self.max_tunnels = settings.max_tunnels_per_user
        self.max_channels = settings.max_channels_per_user
        self.budget = Budget(settings.broker_buffer_limit)
        self.tunnels: dict[str, int] = {}  # principal id -> live tunnels
        self.channels: dict[str, int] = {}  # principal id -> live channels

    def take_tunnel(self, principal_id: str) -> bool:
        """Count one more tunnel for ``principal_id``; False (nothing counted) at the limit."""
        return _take(self.tunnels, principal_id, self.max_tunnels)

    def drop_tunnel(self, principal_id: str) -> None:
        _drop(self.tunnels, principal_id)

    def take_channel(self, principal_id: str) -> bool:
        return _take(self.channels, principal_id, self.max_channels)

    def drop_channel(self, principal_id: str) -> None:
        _drop(self.channels, principal_id)


def _take(counts: dict[str, int], key: str, limit: int) -> bool:
    count = counts.get(key, 0)
    if count >= limit:
        return False
    counts[key] = count + 1
    return True


def _drop(counts: dict[str, int], key: str) -> None:
    count = counts.get(key, 0) - 1
    if count > 0:
        counts[key] = count
    else:
        counts.pop(key, None)  # nothing kept for a user with nothing open


_limits = PerBroker(TunnelLimits)


def limits_for(broker: Broker) -> TunnelLimits:
    """The limits of ``broker`` (one per broker object; gone when the broker is)."""
    return _limits(broker)
