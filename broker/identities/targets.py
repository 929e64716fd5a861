"""A dynamic service's ``Provisioner``, built from the policy with the broker's admin login.

The admin password is read from the file or environment variable the policy names, each time a
provisioner is built (so a rotated file is picked up), and never logged. The broker id in every
tag is the token signing key's id (``keys.key_id``): the same on every replica and across
restarts, so a restarted broker recognises its identities, and a second deployment sharing the
target (another key) never ends ours.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from access.broker.keys import key_id
from access.broker.perbroker import PerBroker
from access.broker.policy.model import AdminCredential, ServiceConfig
from access.broker.provision.base import Provisioner
from access.broker.provision.common import AdminLogin, ProvisionFailed
from access.broker.provision.mysql import MySQLProvisioner
from access.broker.provision.postgres import PostgresProvisioner
from access.broker.provision.redis import RedisProvisioner
from access.broker.store import broker_meta

if TYPE_CHECKING:
    from access.broker.runtime import Broker

__all__ = ["admin_password", "broker_id", "provisioner", "provisioner_for"]


def broker_id(broker: Broker) -> str:
    """The id in the tags of this fleet's identities on targets (``provision.common.tag``): the one
    ``broker_meta`` recorded, which a rotation of the token key leaves as it is; before the first
    ``serve`` recorded one, the token key's (what that ``serve`` records).

    Raises:
        Unavailable: the database could not be reached (the first time only: it is kept).
    """
    return _broker_ids(broker).value


class _BrokerId:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._value: str | None = None

    @property
    def value(self) -> str:
        if self._value is None:
            with self.broker.transaction() as conn:
                recorded = broker_meta.read(conn)
            self._value = (
                recorded.broker_id if recorded and recorded.broker_id else key_id(self.broker.token_key)
            )
        return self._value


_broker_ids = PerBroker(_BrokerId)


def admin_password(svc: ServiceConfig, admin: AdminCredential) -> str:
    """The admin password the policy points at ("" when it names none: a trusting target)."""
    if admin.password_env is not None:
        value = os.environ.get(admin.password_env)
        if value is None:
            raise ProvisionFailed(
                f"{svc.name}: the environment variable {admin.password_env} (admin password) is not set",
                hint="set it in the broker's environment or name a password_file in the policy",
            )
        return value
    if admin.password_file is not None:
        try:
            return Path(admin.password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ProvisionFailed(
                f"{svc.name}: cannot read the admin password file {admin.password_file}: "
                f"{type(exc).__name__}",
                hint="check the file exists and the broker may read it",
            ) from exc
    return ""


def provisioner(broker: Broker, svc: ServiceConfig) -> AbstractContextManager[Provisioner]:
    """The service's provisioner for this broker, closed after the block (a dynamic service)."""
    return provisioner_for(svc, broker_id(broker))


@contextmanager
def provisioner_for(svc: ServiceConfig, ours: str) -> Iterator[Provisioner]:
    """The service's provisioner tagging with broker id ``ours``, closed after the block."""
    creds = svc.credentials
    assert creds is not None and creds.admin is not None  # the policy checked dynamic services
    password = admin_password(svc, creds.admin)
    if svc.kind == "redis":
        redis = RedisProvisioner(
            host=svc.host,
            port=svc.port,
            broker_id=ours,
            admin_user=creds.admin.user,
            admin_password=password or None,
        )
        try:
            yield redis
        finally:
            redis.close()
        return
    login = AdminLogin(
        host=svc.host, port=svc.port, user=creds.admin.user, password=password, database=creds.admin.database
    )
    if svc.kind == "postgres":
        yield PostgresProvisioner(login, broker_id=ours, owner=creds.owner)
    else:
        assert creds.broker_host is not None  # the policy checked dynamic mysql services
        yield MySQLProvisioner(login, broker_id=ours, broker_host=creds.broker_host)
