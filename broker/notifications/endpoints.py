"""One webhook endpoint, as configured (``ACCESS_BROKER_WEBHOOKS``), and its signing secret.

The secret is never a settings value: an endpoint names a file (``secret_file``) or an
environment variable (``secret_env``) holding it, checked when the settings load and read
again at every delivery (so a rotated file needs no restart). The URL is kept out of ``repr``
and out of every log line and audit entry (a Slack incoming-webhook URL is itself a secret):
the endpoint's ``name`` stands for it.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from access.broker.notifications.kinds import Notice
from access.shared.net import check_remote_url

__all__ = ["MIN_SECRET_BYTES", "SecretUnavailable", "WebhookEndpoint"]

MIN_SECRET_BYTES = 16
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SecretUnavailable(Exception):
    """The endpoint's secret could not be read (now): the delivery fails and is retried."""


class WebhookEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="names the endpoint in logs and the ledger (a-z, 0-9, - and _)")
    url: str = Field(repr=False, description="https://..., or http:// to a loopback address")
    format: Literal["slack", "json"] = Field(default="json", description="slack or json")
    secret_file: Path | None = Field(default=None, description="file holding the signing secret (0600)")
    secret_env: str | None = Field(default=None, description="environment variable holding it")
    events: tuple[Notice, ...] = Field(default=tuple(Notice), description="the events sent; default all")

    @model_validator(mode="before")
    @classmethod
    def _check_events(cls, data: object) -> object:
        # Checked here, before pydantic's own enum error, to name the endpoint and the choices.
        if isinstance(data, dict) and isinstance(data.get("events"), list | tuple):
            known = set(Notice)
            unknown = [e for e in data["events"] if not isinstance(e, str) or e not in known]
            if unknown:
                raise ValueError(
                    f"webhook {data.get('name')!r}: unknown events {unknown}; choose from {', '.join(Notice)}"
                )
        return data

    @model_validator(mode="after")
    def _check(self) -> WebhookEndpoint:
        where = f"webhook {self.name!r}"
        if not _NAME.match(self.name):
            raise ValueError(
                f"{where}: a name is 1 to 63 of a-z, 0-9, - and _, starting with a letter or digit"
            )
        check_remote_url(where, self.url)
        if (self.secret_file is None) == (self.secret_env is None):
            raise ValueError(f"{where}: give its signing secret as secret_file or secret_env (one of them)")
        if not self.events:
            raise ValueError(f"{where}: events is empty; leave it out to send every event")
        try:
            self.secret()  # a missing or weak secret is refused at start, not at the first delivery
        except SecretUnavailable as exc:
            raise ValueError(str(exc)) from None
        return self

    def secret(self) -> bytes:
        """The signing secret, read now.

        Raises:
            SecretUnavailable: the file or variable is missing, empty, too short, or the file is
                readable by others.
        """
        where = f"webhook {self.name!r}"
        if self.secret_env is not None:
            if not _ENV_NAME.match(self.secret_env):
                raise SecretUnavailable(f"{where}: secret_env must be an environment variable's name")
            value = os.environ.get(self.secret_env, "").strip().encode()
            source = f"environment variable {self.secret_env}"
        else:
            assert self.secret_file is not None  # one of the two, checked on load
            source = f"secret file {self.secret_file}"
            try:
                mode = self.secret_file.stat().st_mode
                value = self.secret_file.read_bytes().strip()
            except OSError as exc:
                raise SecretUnavailable(f"{where}: cannot read {source}: {exc.strerror}") from None
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise SecretUnavailable(f"{where}: {source} is open to others: chmod 600 it")
        if len(value) < MIN_SECRET_BYTES:
            raise SecretUnavailable(
                f"{where}: {source} holds no secret of at least {MIN_SECRET_BYTES} bytes "
                "(make one with `openssl rand -hex 32`)"
            )
        return value
