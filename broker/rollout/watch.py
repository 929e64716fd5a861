"""``PolicyWatch``: every ``policy_watch_interval`` seconds, apply a newer stored policy version;
``reload_on_signal``: what ``serve`` does on SIGHUP (reload its own file, for every replica)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from access.broker.loops import Loop

if TYPE_CHECKING:
    from access.broker.runtime import Broker

__all__ = ["PolicyWatch", "reload_on_signal"]

log = logging.getLogger(__name__)


class PolicyWatch(Loop):
    """Notice a policy version another process put in force, and apply it here."""

    name = "policy watch"

    def __init__(self, broker: Broker) -> None:
        super().__init__(broker, broker.settings.policy_watch_interval)

    async def tick(self) -> None:
        """Raises: Unavailable: the versions could not be read; the policy in force stays."""
        from access.broker.rollout.publish import apply_latest

        applied = await asyncio.to_thread(apply_latest, self.broker)
        if applied is not None:
            log.warning("%s", applied.summary())


async def reload_on_signal(broker: Broker) -> None:
    """Reload the broker's policy file (SIGHUP); the outcome goes to the log. Never raises."""
    from access.broker.errors import BrokerError
    from access.broker.policy import PolicyError
    from access.broker.rollout.publish import reload_file

    path = broker.settings.policy
    if path is None:
        log.warning("SIGHUP: no policy file to reload (--policy / ACCESS_BROKER_POLICY)")
        return
    try:
        done = await asyncio.to_thread(reload_file, broker, path, "broker:sighup")
    except PolicyError as exc:
        log.error("SIGHUP: policy refused, the one in force stays:\n%s", exc)
    except BrokerError as exc:
        log.error("SIGHUP: policy not reloaded: %s", exc.message)
    else:
        log.warning("SIGHUP: %s", done.summary())
