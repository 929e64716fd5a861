"""What a new PostgreSQL connection's SCRAM proof costs the broker: first login of a password and
salt (PBKDF2, 4096 rounds, as PostgreSQL's default) against every later one (cached salted
password: HMACs only). The reason ``broker/wire/scram.py`` computes the proof itself.

    python benchmarks/scram.py [--logins 1000]
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout, not an installed access

import scramp

from access.broker.wire import scram


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=1000)
    args = parser.parse_args()
    password = secrets.token_urlsafe(24)
    salt = secrets.token_bytes(16)

    def once() -> float:
        started = time.perf_counter()
        scram.client_final(
            password=password,
            salt=salt,
            iterations=4096,
            nonce="clientnonce" + "servernonce",
            client_first_bare="n=,r=clientnonce",
            server_first="r=clientnonceservernonce,s=c2FsdA==,i=4096",
        )
        return time.perf_counter() - started

    first = once()
    later = sorted(once() for _ in range(args.logins))
    client = scramp.ScramClient(["SCRAM-SHA-256"], "user", password)
    mechanism = scramp.ScramMechanism()
    info = mechanism.make_auth_info(password, iteration_count=4096)
    server = mechanism.make_server(lambda _user: info)
    server.set_client_first(client.get_client_first())
    client.set_server_first(server.get_server_first())
    started = time.perf_counter()
    client.get_client_final()
    uncached = time.perf_counter() - started
    print(
        f"first login {first * 1000:.2f} ms; later logins p50 {later[len(later) // 2] * 1e6:.1f} us; "
        f"scramp's own proof (PBKDF2 every login) {uncached * 1000:.2f} ms"
    )


if __name__ == "__main__":
    main()
