"""broker/wire/mysql: byte by byte, then between real clients and the machine's MariaDB.

The real tests run a tiny asyncio driver (a loopback listener; the machine between the client and
MariaDB at 127.0.0.1:3306) in a thread; the clients are the ``mysql`` CLI and PyMySQL, presenting
no password; the broker logs in as a user made for the module (SELECT on its own database, INSERT
on one table for LOAD DATA LOCAL), dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pymysql
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pymysql import _auth as pymysql_auth

from access.broker.wire import ed25519, mysql
from access.broker.wire.base import Statement, TargetLogin, WireError
from tests.servers import MariaDB, mariadb_server

__all__ = ["mariadb_server"]

MARIADB = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
PASSWORD = "grant-secret-" + "x" * 8
LOGIN = TargetLogin("access_bob_ab12", PASSWORD, "payments")


# --- packets the tests build ----------------------------------------------------------------


def packet(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


def packets(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    while data:
        n = int.from_bytes(data[:3], "little")
        out.append((data[3], data[4 : 4 + n]))
        data = data[4 + n :]
    return out


TARGET_SCRAMBLE = b"abcdefgh" + b"ijklmnopqrst"
BOTH_CAPS = (  # what the fake target and the fake client both have
    mysql.CLIENT_LONG_FLAG
    | mysql.CLIENT_CONNECT_WITH_DB
    | mysql.CLIENT_COMPRESS
    | mysql.CLIENT_LOCAL_FILES
    | mysql.CLIENT_PROTOCOL_41
    | mysql.CLIENT_TRANSACTIONS
    | mysql.CLIENT_SECURE_CONNECTION
    | mysql.CLIENT_MULTI_STATEMENTS
    | mysql.CLIENT_MULTI_RESULTS
    | mysql.CLIENT_PLUGIN_AUTH
    | mysql.CLIENT_CONNECT_ATTRS
    | mysql.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | mysql.CLIENT_SESSION_TRACK
    | mysql.CLIENT_DEPRECATE_EOF
)
MARIADB_CAPS = BOTH_CAPS | mysql.CLIENT_FOUND_ROWS | mysql.CLIENT_SSL | 1 << 30
MARIADB_EXT = (
    mysql.MARIADB_CLIENT_PROGRESS | mysql.MARIADB_CLIENT_COM_MULTI | mysql.MARIADB_CLIENT_CACHE_METADATA
)


def greeting(
    caps: int = MARIADB_CAPS, ext: int = MARIADB_EXT, plugin: bytes = b"mysql_native_password"
) -> bytes:
    return (
        b"\x0a5.5.5-10.11.19-MariaDB\x00"
        + (77).to_bytes(4, "little")
        + TARGET_SCRAMBLE[:8]
        + b"\x00"
        + (caps & 0xFFFF).to_bytes(2, "little")
        + b"\x2d"
        + (2).to_bytes(2, "little")
        + (caps >> 16).to_bytes(2, "little")
        + b"\x15"
        + bytes(6)
        + ext.to_bytes(4, "little")
        + TARGET_SCRAMBLE[8:]
        + b"\x00"
        + plugin
        + b"\x00"
    )


# COMPRESS is asked for but not offered (it must not reach the target); INTERACTIVE the target lacks.
CLIENT_CAPS = BOTH_CAPS | mysql.CLIENT_INTERACTIVE
ATTRS = bytes([len(b"\x0c_client_name\x07mariadb")]) + b"\x0c_client_name\x07mariadb"


def response(
    caps: int = CLIENT_CAPS,
    ext: int = mysql.MARIADB_CLIENT_PROGRESS | mysql.MARIADB_CLIENT_COM_MULTI,
    plugin: bytes = b"mysql_native_password",
) -> bytes:
    return (
        caps.to_bytes(4, "little")
        + (1 << 24).to_bytes(4, "little")
        + b"\x2d"
        + bytes(19)
        + ext.to_bytes(4, "little")
        + b"mallory\x00"
        + b"\x14"
        + b"Z" * 20  # whatever the client's password was: never checked, never forwarded
        + b"otherdb\x00"
        + plugin
        + b"\x00"
        + ATTRS
    )


OK = b"\x00\x00\x00\x02\x00\x00\x00"


def split_feeds(feed: object, data: bytes, cut: int) -> None:
    feed(data[:cut])  # type: ignore[operator]
    feed(data[cut:])  # type: ignore[operator]


def logged_in(cut_greeting: int | None = None, cut_response: int | None = None) -> mysql.MysqlHandshake:
    hs = mysql.handshake(LOGIN)
    g = packet(0, greeting())
    split_feeds(hs.feed_target, g, len(g) // 2 if cut_greeting is None else cut_greeting)
    r = packet(1, response())
    split_feeds(hs.feed_client, r, len(r) // 2 if cut_response is None else cut_response)
    return hs


# --- handshake, byte by byte ----------------------------------------------------------------


def test_the_client_gets_a_greeting_without_tls_compression_or_com_multi_and_a_fresh_scramble() -> None:
    hs = mysql.handshake(LOGIN)
    assert hs.wants_target and not hs.done
    assert hs.data_to_client() == b""
    hs.feed_target(packet(0, greeting()))
    [(seq, payload)] = packets(hs.data_to_client())
    assert seq == 0 and payload.startswith(b"\x0a5.5.5-10.11.19-MariaDB\x00" + (77).to_bytes(4, "little"))
    assert hs.data_to_target() == b""
    rest = payload[len(b"\x0a5.5.5-10.11.19-MariaDB\x00") + 4 :]
    scramble = rest[:8] + rest[27:39]
    caps = int.from_bytes(rest[9:11], "little") | int.from_bytes(rest[14:16], "little") << 16
    ext = int.from_bytes(rest[23:27], "little")
    assert scramble != TARGET_SCRAMBLE and b"\x00" not in scramble
    assert caps == MARIADB_CAPS & ~(mysql.CLIENT_SSL | mysql.CLIENT_COMPRESS | 1 << 30)
    assert ext == mysql.MARIADB_CLIENT_PROGRESS | mysql.MARIADB_CLIENT_CACHE_METADATA
    assert rest[16] == 21 and rest.endswith(b"mysql_native_password\x00")


@pytest.mark.parametrize("leg", ["greeting", "response"])
def test_login_split_at_every_byte_sends_the_grants_login_and_the_targets_ok(leg: str) -> None:
    size = len(packet(0, greeting()) if leg == "greeting" else packet(1, response()))
    expected = None
    for cut in range(size + 1):
        hs = logged_in(**{f"cut_{leg}": cut})
        hs.data_to_client()
        sent = hs.data_to_target()
        assert expected is None or sent == expected, cut
        expected = sent
    [(seq, payload)] = packets(expected or b"")
    assert seq == 1
    caps = int.from_bytes(payload[:4], "little")
    assert caps & mysql.CLIENT_COMPRESS == 0 and caps & mysql.CLIENT_SSL == 0
    assert caps & mysql.CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS == 0
    assert caps & mysql.CLIENT_LOCAL_FILES and caps & mysql.CLIENT_CONNECT_WITH_DB
    assert payload[8] == 0x2D  # the client's character set
    assert int.from_bytes(payload[28:32], "little") == mysql.MARIADB_CLIENT_PROGRESS  # not COM_MULTI
    body = payload[32:]
    assert body.startswith(b"access_bob_ab12\x00\x14")
    want = pymysql_auth.scramble_native_password(PASSWORD.encode(), TARGET_SCRAMBLE)  # another implementation
    assert body[17:37] == want == mysql.native_password_scramble(PASSWORD, TARGET_SCRAMBLE)
    assert body[37:] == b"payments\x00mysql_native_password\x00" + ATTRS
    assert b"mallory" not in payload and b"Z" * 20 not in payload and PASSWORD.encode() not in payload


def test_the_targets_ok_goes_to_the_client_after_its_response_and_later_bytes_are_leftovers() -> None:
    hs = logged_in()
    hs.data_to_client()
    hs.data_to_target()
    hs.feed_client(packet(0, b"\x03SELECT 1"))  # a client that does not wait
    assert not hs.done
    hs.feed_target(packet(2, OK) + b"\x07stray")
    assert hs.done
    assert packets(hs.data_to_client()) == [(2, OK)]
    assert hs.leftovers() == (packet(0, b"\x03SELECT 1"), b"\x07stray")
    assert hs.client_user == "mallory"


def test_a_client_answering_for_another_plugin_is_switched_to_native_and_gets_the_ok_after() -> None:
    hs = mysql.handshake(LOGIN)
    hs.feed_target(packet(0, greeting()))
    [(_, mine)] = packets(hs.data_to_client())
    scramble = mine[mine.index(b"\x00", 1) + 5 :][:8] + mine[-22 - 12 - 1 : -22 - 1]
    hs.feed_client(packet(1, response(plugin=b"caching_sha2_password")))
    assert packets(hs.data_to_client()) == [(2, b"\xfemysql_native_password\x00" + scramble + b"\x00")]
    assert b"access_bob_ab12" in hs.data_to_target()  # the target leg does not wait
    hs.feed_target(packet(2, OK))
    assert not hs.done and hs.data_to_client() == b""  # held until the client has answered
    hs.feed_client(packet(3, b"anything"[:3]) + packet(0, b"\x03SELECT 1"))
    assert hs.done
    assert packets(hs.data_to_client()) == [(4, OK)]
    assert hs.leftovers() == (packet(0, b"\x03SELECT 1"), b"")


def test_a_target_err_while_the_client_switches_comes_after_its_answer() -> None:
    hs = mysql.handshake(LOGIN)
    hs.feed_target(packet(0, greeting()))
    hs.feed_client(packet(1, response(plugin=b"client_ed25519")))
    with pytest.raises(WireError) as caught:
        hs.feed_target(packet(2, b"\xff\x15\x04#28000Access denied"))
    assert packets(caught.value.client_message)[0][0] == 4


def test_no_database_in_the_grant_keeps_the_one_the_client_asked_for() -> None:
    hs = mysql.handshake(TargetLogin("u", "p"))
    hs.feed_target(packet(0, greeting()))
    hs.feed_client(packet(1, response()))
    assert b"otherdb\x00mysql_native_password\x00" in hs.data_to_target()


def test_the_targets_err_becomes_an_access_error_for_the_client_without_the_password() -> None:
    hs = logged_in()
    hs.data_to_target()
    err = b"\xff\x15\x04#28000Access denied for user 'access_bob_ab12'@'127.0.0.1' (using password: YES)"
    with pytest.raises(WireError) as caught:
        hs.feed_target(packet(2, err))
    [(seq, payload)] = packets(caught.value.client_message)
    assert seq == 2
    assert payload.startswith(
        b"\xff\x15\x04#28000access: the target refused the broker's login for this grant: "
    )
    assert payload.endswith(
        b"1045 Access denied for user 'access_bob_ab12'@'127.0.0.1' (using password: YES)"
    )
    assert PASSWORD not in str(caught.value) and PASSWORD.encode() not in payload


def test_an_err_instead_of_a_greeting_reaches_the_client_as_a_pre_41_err() -> None:
    hs = mysql.handshake(LOGIN)
    with pytest.raises(WireError) as caught:
        hs.feed_target(packet(0, b"\xff\x10\x04Too many connections"))
    assert packets(caught.value.client_message) == [
        (0, b"\xff\x13\x04access: the target refused the connection: 1040 Too many connections")
    ]


def test_an_auth_switch_to_native_password_answers_with_the_new_scramble() -> None:
    hs = mysql.handshake(LOGIN)
    hs.feed_target(packet(0, greeting(plugin=b"client_ed25519")))
    hs.feed_client(packet(1, response()))
    assert b"mysql_native_password\x00" in hs.data_to_target()  # unknown default plugin: native
    nonce = b"N" * 20
    hs.feed_target(packet(2, b"\xfemysql_native_password\x00" + nonce + b"\x00"))
    assert packets(hs.data_to_target()) == [(3, mysql.native_password_scramble(PASSWORD, nonce))]
    hs.feed_target(packet(4, OK))
    assert hs.done and packets(hs.data_to_client())[-1] == (2, OK)


def test_an_auth_switch_to_client_ed25519_signs_the_nonce_with_the_password() -> None:
    hs = logged_in()
    hs.data_to_target()
    nonce = bytes(range(1, 32)) + b"\x00"  # 32 random bytes: a last NUL is part of them
    hs.feed_target(packet(2, b"\xfeclient_ed25519\x00" + nonce))
    [(seq, signature)] = packets(hs.data_to_target())
    assert seq == 3 and len(signature) == 64
    key = Ed25519PublicKey.from_public_bytes(ed25519.public_key(PASSWORD.encode()))
    key.verify(signature, nonce)  # raises if it is not the password's signature of the nonce
    hs.feed_target(packet(4, OK))
    assert hs.done


def test_ed25519_with_a_32_byte_password_is_rfc_8032_with_that_seed() -> None:
    rng = random.Random(25519)
    for _ in range(3):
        seed, message = rng.randbytes(32), rng.randbytes(32)
        theirs = Ed25519PrivateKey.from_private_bytes(seed)
        assert ed25519.sign(seed, message) == theirs.sign(message)
        raw = theirs.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        assert ed25519.public_key(seed) == raw


@pytest.mark.parametrize(
    "switch",
    [
        b"\xfeclient_ed25519\x00" + b"N" * 31,  # a nonce too short
        b"\xfesha256_password\x00" + b"N" * 21,
        b"\xfemysql_clear_password\x00",
        b"\xfedialog\x00x",
        b"\xfe",  # mysql_old_password
    ],
)
def test_plugins_the_broker_cannot_do_are_refused_with_a_clear_err(switch: bytes) -> None:
    hs = logged_in()
    with pytest.raises(WireError) as caught:
        hs.feed_target(packet(2, switch))
    [(seq, payload)] = packets(caught.value.client_message)
    assert seq == 2 and payload.startswith(b"\xff\xe3\x04#08004access: the target asks for ")
    assert b"create the grant's identities on this target with mysql_native_password or ed25519" in payload
    assert hs.data_to_target().count(b"\x00") >= 1  # only the response from before


def test_caching_sha2_fast_path_logs_in_and_full_authentication_is_refused() -> None:
    hs = mysql.handshake(LOGIN)
    hs.feed_target(
        packet(0, greeting(caps=MARIADB_CAPS | mysql.CLIENT_MYSQL, plugin=b"caching_sha2_password"))
    )
    hs.feed_client(packet(1, response()))
    sent = hs.data_to_target()
    want = pymysql_auth.scramble_caching_sha2(PASSWORD.encode(), TARGET_SCRAMBLE)
    assert mysql.caching_sha2_scramble(PASSWORD, TARGET_SCRAMBLE) == want and want in sent
    assert sent.endswith(b"caching_sha2_password\x00" + ATTRS)  # the target's plugin, not the client's
    hs.feed_target(packet(2, b"\x01\x03") + packet(3, OK))
    assert hs.done and packets(hs.data_to_client())[-1] == (2, OK)

    full = mysql.handshake(LOGIN)
    full.feed_target(packet(0, greeting(plugin=b"caching_sha2_password")))
    full.feed_client(packet(1, response()))
    with pytest.raises(WireError) as caught:
        full.feed_target(packet(2, b"\x01\x04"))
    assert b"caching_sha2_password full authentication" in caught.value.client_message


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def decrypt(key: rsa.RSAPrivateKey, data: bytes) -> bytes:
    sha1 = hashes.SHA1()  # noqa: S303 - the protocol's choice
    return key.decrypt(data, padding.OAEP(mgf=padding.MGF1(algorithm=sha1), algorithm=sha1, label=None))


def full_authentication(**options: object) -> mysql.MysqlHandshake:
    hs = mysql.handshake(LOGIN, **options)  # type: ignore[arg-type]
    hs.feed_target(packet(0, greeting(plugin=b"caching_sha2_password")))
    hs.feed_client(packet(1, response()))
    hs.data_to_target()
    hs.feed_target(packet(2, b"\x01\x04"))
    return hs


@pytest.mark.parametrize("how", ["pinned", "fetched"])
def test_caching_sha2_full_authentication_sends_the_password_rsa_encrypted(
    rsa_key: rsa.RSAPrivateKey, how: str
) -> None:
    if how == "pinned":
        hs = full_authentication(target_rsa_key=pem(rsa_key))
    else:
        hs = full_authentication(fetch_target_rsa_key=True)
        assert packets(hs.data_to_target()) == [(3, b"\x02")]
        hs.feed_target(packet(4, b"\x01" + pem(rsa_key)))
    [(seq, sealed)] = packets(hs.data_to_target())
    assert seq == (3 if how == "pinned" else 5) and len(sealed) == 256
    theirs = pymysql_auth.sha2_rsa_encrypt(PASSWORD.encode(), TARGET_SCRAMBLE, pem(rsa_key))
    assert decrypt(rsa_key, sealed) == decrypt(rsa_key, theirs)  # what PyMySQL sends MySQL
    hs.feed_target(packet(seq + 1, OK))
    assert hs.done and packets(hs.data_to_client())[-1] == (2, OK)


def test_an_unusable_rsa_key_from_the_target_is_a_wire_error() -> None:
    hs = full_authentication(fetch_target_rsa_key=True)
    with pytest.raises(WireError) as caught:
        hs.feed_target(packet(4, b"\x01-----BEGIN PUBLIC KEY-----\nnonsense\n"))
    assert b"RSA public key for caching_sha2_password is unusable" in caught.value.client_message


def test_an_ssl_request_from_the_client_is_refused() -> None:
    hs = mysql.handshake(LOGIN)
    hs.feed_target(packet(0, greeting()))
    with pytest.raises(WireError) as caught:
        hs.feed_client(packet(1, response(caps=CLIENT_CAPS | mysql.CLIENT_SSL)[:32]))
    assert b"the local tunnel offers no TLS" in caught.value.client_message
    assert packets(caught.value.client_message)[0][0] == 2


def tls_login(caps: int = MARIADB_CAPS, plugin: bytes = b"mysql_native_password") -> mysql.MysqlHandshake:
    hs = mysql.handshake(LOGIN, tls=True)
    hs.feed_target(packet(0, greeting(caps=caps, plugin=plugin)))
    hs.feed_client(packet(1, response()))
    return hs


def test_with_tls_an_ssl_request_goes_first_and_the_response_only_once_tls_is_up() -> None:
    hs = tls_login()
    greeted = packets(hs.data_to_client())
    assert len(greeted) == 1 and greeted[0][0] == 0  # the client gets its greeting as without TLS
    [(seq, request)] = packets(hs.data_to_target())
    assert seq == 1 and len(request) == 32 and hs.wants_tls and not hs.done
    hs.feed_client(packet(0, b"\x03SELECT 1"))  # the client's bytes wait; nothing goes out yet
    assert hs.data_to_target() == b"" and hs.data_to_client() == b""
    hs.tls_started()
    assert not hs.wants_tls
    [(seq, payload)] = packets(hs.data_to_target())
    assert seq == 2 and payload[:32] == request  # the SSLRequest is the response's first 32 bytes
    caps = int.from_bytes(payload[:4], "little")
    assert caps & mysql.CLIENT_SSL and not caps & mysql.CLIENT_COMPRESS
    assert int.from_bytes(payload[28:32], "little") == mysql.MARIADB_CLIENT_PROGRESS
    body = payload[32:]
    assert body.startswith(b"access_bob_ab12\x00\x14")
    assert body[17:37] == mysql.native_password_scramble(PASSWORD, TARGET_SCRAMBLE)
    hs.feed_target(packet(3, OK))
    assert hs.done and packets(hs.data_to_client()) == [(2, OK)]
    assert hs.leftovers() == (packet(0, b"\x03SELECT 1"), b"")


def test_with_tls_a_target_that_offers_none_is_refused_before_the_client_is_greeted() -> None:
    hs = mysql.handshake(LOGIN, tls=True)
    with pytest.raises(WireError) as caught:
        hs.feed_target(packet(0, greeting(caps=MARIADB_CAPS & ~mysql.CLIENT_SSL)))
    [(seq, err)] = packets(caught.value.client_message)
    assert seq == 0 and err.startswith(b"\xff\x13\x04access: the target offers no TLS")
    assert hs.data_to_client() == b"" and hs.data_to_target() == b""


def test_with_tls_target_bytes_before_tls_is_up_are_refused_never_read_as_the_login() -> None:
    hs = tls_login()
    hs.data_to_target()
    with pytest.raises(WireError) as caught:
        hs.feed_target(packet(2, OK))  # in clear, after the SSLRequest: a forged OK
    assert b"answered the broker's TLS request in clear" in caught.value.client_message
    with pytest.raises(WireError):
        hs.tls_started()
    assert not hs.done


def test_a_login_refused_from_outside_gets_the_err_the_client_expects_where_the_login_is() -> None:
    hs = tls_login()
    with pytest.raises(WireError) as caught:
        hs.refuse("TLS failed", "TLS to svc-my failed (certificate verify failed)")
    [(seq, err)] = packets(caught.value.client_message)
    assert seq == 2 and err == b"\xff\x13\x04#08S01access: TLS to svc-my failed (certificate verify failed)"
    assert str(caught.value) == "TLS failed"
    ungreeted = mysql.handshake(LOGIN)  # e.g. the deadline passed before the target's greeting
    with pytest.raises(WireError) as caught:
        ungreeted.refuse("too slow", "the target did not finish the login")
    [(seq, err)] = packets(caught.value.client_message)
    assert seq == 0 and err == b"\xff\x13\x04access: the target did not finish the login"
    with pytest.raises(WireError):
        mysql.handshake(LOGIN).tls_started()  # a machine without TLS never waits for it


def test_with_tls_caching_sha2_full_authentication_sends_the_password_inside_tls() -> None:
    hs = tls_login(caps=MARIADB_CAPS | mysql.CLIENT_MYSQL, plugin=b"caching_sha2_password")
    hs.data_to_target()
    hs.tls_started()
    hs.data_to_target()
    hs.feed_target(packet(3, b"\x01\x04"))  # "perform full authentication"
    assert packets(hs.data_to_target()) == [(4, PASSWORD.encode() + b"\x00")]
    hs.feed_target(packet(5, OK))
    assert hs.done


@pytest.mark.parametrize("side", ["client", "target"])
def test_a_handshake_packet_over_the_ceiling_is_refused_from_its_header(side: str) -> None:
    hs = mysql.handshake(LOGIN)
    if side == "client":
        hs.feed_target(packet(0, greeting()))
    header = (mysql.MAX_HANDSHAKE_PACKET + 1).to_bytes(3, "little") + b"\x01"
    with pytest.raises(WireError) as caught:
        (hs.feed_client if side == "client" else hs.feed_target)(header)
    assert b"is over 65536 bytes" in caught.value.client_message
    with pytest.raises(WireError):
        hs.feed_target(b"x")


def test_an_endless_authentication_exchange_is_cut() -> None:
    hs = logged_in()
    with pytest.raises(WireError):
        for seq in range(2, 2 + mysql.MAX_AUTH_ROUNDS + 1):
            hs.feed_target(packet(seq, b"\x01\x03"))


def test_a_truncated_greeting_is_a_wire_error() -> None:
    hs = mysql.handshake(LOGIN)
    with pytest.raises(WireError) as caught:
        hs.feed_target(packet(0, greeting()[:20]))
    assert b"bad handshake" in caught.value.client_message


# --- tap, byte by byte ----------------------------------------------------------------------

EXECUTE_PARAMS = b"\x00\x01\x00\x00\x00" + b"\x00\x01" + b"\xfe\x00" + b"\x0bsecret-card"
STREAM = (
    packet(0, b"\x03SELECT * FROM t WHERE id = 1")
    + packet(0, b"\x0e")  # ping: not recorded
    + packet(0, b"\x16INSERT INTO t VALUES (?)")
    + packet(0, b"\x17" + (7).to_bytes(4, "little") + EXECUTE_PARAMS)
    + packet(0, b"\x18" + (7).to_bytes(4, "little") + b"\x00\x00long secret value")
    + packet(0, b"\x02payments")
    + packet(0, b"\x19" + (7).to_bytes(4, "little"))
    + packet(0, b"\x03LOAD DATA LOCAL INFILE 'f' INTO TABLE t")
    + packet(2, b"\x11\x03DROP TABLE t\n")  # file content that looks like commands
    + packet(3, b"")
    + packet(0, b"\x01")
)
STATEMENTS = [
    Statement("query", "SELECT * FROM t WHERE id = 1"),
    Statement("prepare", "INSERT INTO t VALUES (?)"),
    Statement("execute", "", "7"),
    Statement("command", "COM_STMT_SEND_LONG_DATA", "7"),
    Statement("init_db", "payments"),
    Statement("command", "COM_STMT_CLOSE", "7"),
    Statement("query", "LOAD DATA LOCAL INFILE 'f' INTO TABLE t"),
    Statement("local_infile", "15 bytes"),
    Statement("command", "COM_QUIT"),
]


def test_the_tap_records_commands_split_at_every_byte_and_never_parameter_values() -> None:
    for cut in range(len(STREAM) + 1):
        t = mysql.tap()
        t.client_bytes(STREAM[:cut])
        t.client_bytes(memoryview(STREAM)[cut:])
        got = t.take()
        assert got == STATEMENTS, cut
        assert t.take() == []
    whole = repr(STATEMENTS)
    assert "secret" not in whole and "DROP" not in whole


def test_the_tap_byte_by_byte() -> None:
    t = mysql.tap()
    for i in range(len(STREAM)):
        t.client_bytes(STREAM[i : i + 1])
    assert t.take() == STATEMENTS


def test_a_multi_packet_query_is_one_statement_cut_at_4_kib_and_its_continuation_is_no_command() -> None:
    first = b"\x03SELECT '" + "é".encode() * 10_000
    first += b"x" * (0xFFFFFF - len(first))
    continuation = b"\x11 not a change user"  # sequence id 1: part of the query, never a command
    stream = packet(0, first) + packet(1, continuation + b"'") + packet(0, b"\x03SELECT 2")
    t = mysql.tap()
    view = memoryview(stream)
    for start in range(0, len(stream), 1 << 16):
        t.client_bytes(view[start : start + (1 << 16)])
    big, small = t.take()
    assert big.kind == "query" and len(big.text.encode()) <= mysql.TEXT_LIMIT + 2
    assert big.text.startswith("SELECT 'éé") and small == Statement("query", "SELECT 2")


def test_an_exactly_16_mib_payload_ends_with_an_empty_packet() -> None:
    body = b"\x03" + b"y" * (0xFFFFFF - 1)
    t = mysql.tap(text_limit=4)
    t.client_bytes(packet(0, body) + packet(1, b"") + packet(0, b"\x03SELECT 3"))
    assert t.take() == [Statement("query", "yyyy"), Statement("query", "SELE")]


def test_com_change_user_is_refused_as_soon_as_its_command_byte_arrives() -> None:
    t = mysql.tap()
    t.client_bytes(packet(0, b"\x03SELECT 1") + (40).to_bytes(3, "little") + b"\x00")
    with pytest.raises(WireError) as caught:
        t.client_bytes(b"\x11")
    [(seq, payload)] = packets(caught.value.client_message)
    assert seq == 1 and payload.startswith(b"\xff\xcb\x04#42000access: COM_CHANGE_USER is refused")
    assert t.take() == [Statement("query", "SELECT 1")]
    with pytest.raises(WireError):
        t.client_bytes(b"more")


def test_the_tap_keeps_at_most_max_pending_statements_and_counts_the_rest() -> None:
    t = mysql.tap(max_pending=3)
    t.client_bytes(b"".join(packet(0, b"\x03SELECT %d" % i) for i in range(5)))
    assert [s.text for s in t.take()] == ["SELECT 0", "SELECT 1", "SELECT 2"]
    assert t.dropped == 2
    t.client_bytes(packet(0, b"\x03SELECT 5"))
    assert t.take() == [Statement("query", "SELECT 5")]


# --- against MariaDB -----------------------------------------------------------------------


@dataclass
class Grant:
    login: TargetLogin
    database: str


@pytest.fixture(scope="module")
def grant() -> Iterator[Grant]:
    tag = secrets.token_hex(4)
    user, database, password = f"acc_u_{tag}", f"acc_t_{tag}", secrets.token_urlsafe(24)
    admin = pymysql.connect(**MARIADB, autocommit=True)  # type: ignore[arg-type]
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{database}`")
            cur.execute(f"CREATE TABLE `{database}`.t (x INT)")
            cur.execute(f"CREATE TABLE `{database}`.li (s VARCHAR(100))")
            cur.execute(f"INSERT INTO `{database}`.t VALUES (42)")
            cur.execute(
                f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD(%s)",
                (password,),
            )
            cur.execute(f"GRANT SELECT ON `{database}`.* TO '{user}'@'127.0.0.1'")
            cur.execute(f"GRANT INSERT ON `{database}`.li TO '{user}'@'127.0.0.1'")
        yield Grant(TargetLogin(user, password, database), database)
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")
            cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
        admin.close()


@dataclass
class Channel:
    statements: list[Statement] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    closed: bool = False


class Driver:
    """A loopback listener: each connection gets the machine between it and MariaDB."""

    def __init__(self, target_port: int = 3306) -> None:
        self.login = LOGIN
        self.target_port = target_port
        self.channels: list[Channel] = []
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(5)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> asyncio.Server:
            server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            return server

        self.server = self.loop.run_until_complete(start())
        self.loop.run_forever()

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            await self.server.wait_closed()
            self.loop.stop()

        asyncio.run_coroutine_threadsafe(close(), self.loop)
        self.thread.join(5)
        self.loop.close()

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        channel = Channel()
        self.channels.append(channel)
        hs = mysql.handshake(self.login)
        t_reader, t_writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.target_port), 5)
        inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

        async def pump(reader: asyncio.StreamReader, side: str) -> None:
            while data := await reader.read(1 << 16):
                await inbox.put((side, data))
            await inbox.put((side, b""))

        pumps = [asyncio.create_task(pump(c_reader, "c")), asyncio.create_task(pump(t_reader, "t"))]
        tap = mysql.tap()
        try:
            while not hs.done:
                side, data = await asyncio.wait_for(inbox.get(), 5)
                if not data:
                    return
                try:
                    (hs.feed_client if side == "c" else hs.feed_target)(data)
                except WireError as exc:
                    channel.errors.append(str(exc))
                    c_writer.write(hs.data_to_client() + exc.client_message)
                    return
                c_writer.write(hs.data_to_client())
                t_writer.write(hs.data_to_target())
            to_target, to_client = hs.leftovers()
            tap.client_bytes(to_target)
            t_writer.write(to_target)
            c_writer.write(to_client)
            while True:
                side, data = await asyncio.wait_for(inbox.get(), 10)
                if not data:
                    return
                if side == "t":
                    c_writer.write(data)
                    continue
                try:
                    tap.client_bytes(data)
                except WireError as exc:
                    channel.errors.append(str(exc))
                    c_writer.write(exc.client_message)
                    return
                finally:
                    channel.statements += tap.take()
                t_writer.write(data)
        finally:
            for task in pumps:
                task.cancel()
            for writer in (c_writer, t_writer):
                writer.close()
            channel.closed = True

    def wait_closed(self, channel: Channel) -> Channel:
        deadline = time.monotonic() + 5
        while not channel.closed:
            assert time.monotonic() < deadline, "the channel did not close"
            time.sleep(0.01)
        return channel


@pytest.fixture(scope="module")
def driver(grant: Grant) -> Iterator[Driver]:
    d = Driver()
    try:
        yield d
    finally:
        d.stop()


def cli(
    driver: Driver, login: TargetLogin, sql: str, *options: str
) -> tuple[subprocess.CompletedProcess[str], Channel]:
    driver.login = login
    before = len(driver.channels)
    done = subprocess.run(
        [
            "mysql",
            "--no-defaults",
            "--protocol=TCP",
            "-h127.0.0.1",
            f"-P{driver.port}",
            "-u",
            "someone-else",
            "--ssl=0",
            "--batch",
            "--skip-column-names",
            *options,
            "-e",
            sql,
        ],
        capture_output=True,
        text=True,
        timeout=15,
        env={**os.environ, "MYSQL_PWD": ""},
    )
    assert len(driver.channels) == before + 1
    return done, driver.wait_closed(driver.channels[-1])


def test_the_mysql_cli_with_no_password_gets_in_as_the_grant_and_queries(
    driver: Driver, grant: Grant
) -> None:
    done, channel = cli(driver, grant.login, "SELECT x FROM t; SELECT CURRENT_USER(), DATABASE()")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["42", f"{grant.login.user}@127.0.0.1\t{grant.database}"]
    assert Statement("query", "SELECT x FROM t") in channel.statements
    assert Statement("query", "SELECT CURRENT_USER(), DATABASE()") in channel.statements
    assert channel.statements[-1] == Statement("command", "COM_QUIT")


def test_a_write_the_grant_may_not_do_shows_the_servers_error(driver: Driver, grant: Grant) -> None:
    done, channel = cli(driver, grant.login, "INSERT INTO t VALUES (1)")
    assert done.returncode == 1
    assert f"INSERT command denied to user '{grant.login.user}'@'127.0.0.1'" in done.stderr
    assert Statement("query", "INSERT INTO t VALUES (1)") in channel.statements


def test_sql_prepare_and_execute_are_tapped_as_queries(driver: Driver, grant: Grant) -> None:
    done, channel = cli(
        driver, grant.login, "PREPARE s FROM 'SELECT x + ? FROM t'; SET @a = 1; EXECUTE s USING @a"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "43"
    assert Statement("query", "PREPARE s FROM 'SELECT x + ? FROM t'") in channel.statements
    assert Statement("query", "EXECUTE s USING @a") in channel.statements


@pytest.mark.parametrize("plugin", ["caching_sha2_password", "client_ed25519"])
def test_a_cli_defaulting_to_another_plugin_gets_in(driver: Driver, grant: Grant, plugin: str) -> None:
    done, _ = cli(driver, grant.login, "SELECT CURRENT_USER()", f"--default-auth={plugin}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{grant.login.user}@127.0.0.1"


def test_a_wrong_broker_password_shows_the_client_the_access_error(driver: Driver, grant: Grant) -> None:
    wrong = TargetLogin(grant.login.user, "not-the-password", grant.database)
    done, channel = cli(driver, wrong, "SELECT 1")
    assert done.returncode == 1
    assert "ERROR 1045 (28000): access: the target refused the broker's login for this grant: " in done.stderr
    assert f"Access denied for user '{grant.login.user}'@'127.0.0.1' (using password: YES)" in done.stderr
    assert "not-the-password" not in done.stderr and channel.statements == []


def pymysql_client(driver: Driver, login: TargetLogin, **kwargs: object) -> pymysql.Connection:  # type: ignore[type-arg]
    driver.login = login
    return pymysql.connect(
        host="127.0.0.1",
        port=driver.port,
        user="whoever",
        password="",
        connect_timeout=5,
        read_timeout=10,
        **kwargs,  # type: ignore[arg-type]
    )


def test_pymysql_binary_prepared_statements_are_tapped_without_their_values(
    driver: Driver, grant: Grant
) -> None:
    conn = pymysql_client(driver, grant.login)
    channel = driver.channels[-1]
    try:
        # PyMySQL has no server-side prepared statements: its framing sends the binary protocol's.
        conn._execute_command(mysql.COM_STMT_PREPARE, "SELECT x + ? FROM t")
        ok = conn._read_packet()._data
        assert ok[0] == 0 and int.from_bytes(ok[7:9], "little") == 1
        statement_id = int.from_bytes(ok[1:5], "little")
        for _ in range(1 + 1 + 1 + 1):  # a parameter definition, EOF, a column definition, EOF
            conn._read_packet()
        value = (31337).to_bytes(8, "little")
        params = b"\x00" + (1).to_bytes(4, "little") + b"\x00" + b"\x01" + b"\x08\x00" + value
        conn._execute_command(mysql.COM_STMT_EXECUTE, statement_id.to_bytes(4, "little") + params)
        packets = [conn._read_packet()._data for _ in range(5)]  # columns, definition, EOF, row, EOF
        assert packets[3] == b"\x00\x00" + (42 + 31337).to_bytes(8, "little")  # the binary row: a BIGINT
        assert packets[4][0] == 0xFE
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM t")
            assert cur.fetchone() == (1,)
    finally:
        conn.close()
    driver.wait_closed(channel)
    assert channel.statements[-4:] == [
        Statement("prepare", "SELECT x + ? FROM t"),
        Statement("execute", "", str(statement_id)),
        Statement("query", "SELECT COUNT(*) FROM t"),
        Statement("command", "COM_QUIT"),
    ]
    assert "31337" not in repr(channel.statements)


def test_load_data_local_content_is_not_taken_for_commands(
    driver: Driver, grant: Grant, tmp_path: Path
) -> None:
    data = tmp_path / "rows.txt"
    data.write_bytes(b"\x11 looks like COM_CHANGE_USER\n\x03SELECT hidden\n")
    conn = pymysql_client(driver, grant.login, local_infile=True, autocommit=True)
    channel = driver.channels[-1]
    try:
        with conn.cursor() as cur:
            cur.execute(f"LOAD DATA LOCAL INFILE '{data}' INTO TABLE li")
            cur.execute("SELECT COUNT(*) FROM li")
            assert cur.fetchone() == (2,)
    finally:
        conn.close()
    driver.wait_closed(channel)
    assert channel.errors == []
    assert channel.statements[-4:] == [
        Statement("query", f"LOAD DATA LOCAL INFILE '{data}' INTO TABLE li"),
        Statement("local_infile", f"{data.stat().st_size} bytes"),
        Statement("query", "SELECT COUNT(*) FROM li"),
        Statement("command", "COM_QUIT"),
    ]


def test_com_change_user_is_refused_and_the_connection_cut(driver: Driver, grant: Grant) -> None:
    conn = pymysql_client(driver, grant.login)
    channel = driver.channels[-1]
    root = b"root\x00\x00" + b"mysql_native_password\x00"
    conn._execute_command(mysql.COM_CHANGE_USER, root)
    with pytest.raises(pymysql.err.OperationalError) as caught:
        conn._read_packet()
    assert caught.value.args[0] == 1227 and "COM_CHANGE_USER is refused" in caught.value.args[1]
    driver.wait_closed(channel)
    assert channel.errors == ["the client sent COM_CHANGE_USER"]
    conn.close()


def test_mangled_handshake_packets_raise_wire_error_and_nothing_else() -> None:
    rng = random.Random(10)
    legs = [(0, greeting()), (1, response()), (2, b"\xfemysql_native_password\x00" + b"N" * 21), (2, OK)]
    for _ in range(3000):
        hs = mysql.handshake(LOGIN, tls=rng.random() < 0.5)
        broken = rng.randrange(len(legs))
        try:
            for i, (seq, payload) in enumerate(legs):
                if i == broken:
                    payload = bytearray(payload)
                    for _ in range(rng.randint(1, 4)):
                        payload[rng.randrange(len(payload))] = rng.randrange(256)
                    payload = bytes(payload[: rng.randint(0, len(payload))])
                if hs.wants_tls:
                    hs.tls_started()
                (hs.feed_client if seq == 1 else hs.feed_target)(packet(seq, payload))
        except WireError as exc:
            [(_, err)] = packets(exc.client_message)
            assert err[:1] == b"\xff"


def test_the_broker_logs_in_to_an_ed25519_identity(mariadb_server: MariaDB) -> None:
    password = secrets.token_urlsafe(32)
    user = f"ed_{secrets.token_hex(4)}"
    with mariadb_server.admin() as admin, admin.cursor() as cur:
        cur.execute(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED VIA ed25519 USING PASSWORD(%s)", [password])
    driver = Driver(mariadb_server.port)
    try:
        done, channel = cli(driver, TargetLogin(user, password), "SELECT CURRENT_USER()")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"{user}@127.0.0.1" and channel.errors == []
        wrong, _ = cli(driver, TargetLogin(user, password + "x"), "SELECT 1")
        assert "access: the target refused the broker's login for this grant: 1045" in wrong.stderr
    finally:
        driver.stop()


def test_the_tap_knows_a_client_that_said_com_quit() -> None:
    """COM_QUIT is the client's goodbye: the channel's close is the client's, even when the
    server's close (its answer to COM_QUIT) reaches the broker first (broker/tunnel/protocol.py)."""
    tap = mysql.tap()
    tap.client_bytes(packet(0, bytes([mysql.COM_QUERY]) + b"select 1"))
    assert not tap.terminated
    quit_packet = packet(0, bytes([mysql.COM_QUIT]))
    tap.client_bytes(quit_packet[:2])  # split across chunks: known once its command byte came
    assert not tap.terminated
    tap.client_bytes(quit_packet[2:])
    assert tap.terminated
