"""Ed25519 signatures (RFC 8032) in pure Python, for MariaDB's client_ed25519 authentication.

MariaDB's ed25519 plugin signs the server's 32-byte nonce with the PASSWORD as the Ed25519 secret:
the key material is SHA-512(password) for a password of any length, where RFC 8032 takes a 32-byte
seed (so ``cryptography``'s Ed25519, which only takes 32-byte seeds, cannot do it; for a 32-byte
password both give the same signature, which the tests check).

Not constant-time (Python integers): it runs once per login, on the broker, over the grant's
short-lived password.
"""

from __future__ import annotations

import hashlib

__all__ = ["public_key", "sign"]

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)

_Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z, xy = T/Z


def _recover_x(y: int, sign: int) -> int:
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if x & 1 != sign:
        x = _P - x
    return x


_BY = 4 * pow(5, _P - 2, _P) % _P
_BX = _recover_x(_BY, 0)
_BASE: _Point = (_BX, _BY, 1, _BX * _BY % _P)
_ZERO: _Point = (0, 1, 1, 0)


def _add(p: _Point, q: _Point) -> _Point:
    a = (p[1] - p[0]) * (q[1] - q[0]) % _P
    b = (p[1] + p[0]) * (q[1] + q[0]) % _P
    c = 2 * p[3] * q[3] * _D % _P
    d = 2 * p[2] * q[2] % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _times_base(n: int) -> _Point:
    out, q = _ZERO, _BASE
    while n:
        if n & 1:
            out = _add(out, q)
        q = _add(q, q)
        n >>= 1
    return out


def _encode(p: _Point) -> bytes:
    z = pow(p[2], _P - 2, _P)
    x, y = p[0] * z % _P, p[1] * z % _P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def _secret(password: bytes) -> tuple[int, bytes]:
    h = hashlib.sha512(password).digest()
    a = int.from_bytes(h[:32], "little")
    a &= (1 << 254) - 8
    a |= 1 << 254
    return a, h[32:]


def public_key(password: bytes) -> bytes:
    """The 32-byte public key of ``password`` (what MariaDB stores, base64, for the user)."""
    return _encode(_times_base(_secret(password)[0]))


def sign(password: bytes, message: bytes) -> bytes:
    """The 64-byte Ed25519 signature of ``message`` with ``password`` as the secret."""
    a, prefix = _secret(password)
    public = _encode(_times_base(a))
    r = int.from_bytes(hashlib.sha512(prefix + message).digest(), "little") % _L
    big_r = _encode(_times_base(r))
    k = int.from_bytes(hashlib.sha512(big_r + public + message).digest(), "little") % _L
    return big_r + ((r + k * a) % _L).to_bytes(32, "little")
