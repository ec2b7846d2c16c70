"""Edwards25519 arithmetic in plain Python (RFC 8032, section 5.1), for building and checking
the signature edge cases of SPEC.md section 6.1. Slow and not constant-time: tests only."""

from __future__ import annotations

import hashlib

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, -1, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
IDENTITY = (0, 1)


def _x_from_y(y: int, sign: int) -> int | None:
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if v * x * x % P == (-u) % P:
        x = x * SQRT_M1 % P
    if v * x * x % P != u:
        return None
    if x == 0 and sign:
        return None
    return P - x if x & 1 != sign else x


B = (_x_from_y(4 * pow(5, -1, P) % P, 0), 4 * pow(5, -1, P) % P)


def add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    return ((x1 * y2 + x2 * y1) * pow(1 + t, -1, P) % P, (y1 * y2 + x1 * x2) * pow(1 - t, -1, P) % P)


def mul(k: int, point: tuple[int, int]) -> tuple[int, int]:
    out = IDENTITY
    while k:
        if k & 1:
            out = add(out, point)
        point, k = add(point, point), k >> 1
    return out


def neg(point: tuple[int, int]) -> tuple[int, int]:
    return (-point[0] % P, point[1])


def encode(point: tuple[int, int]) -> bytes:
    x, y = point
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def decode(data: bytes, *, reduce: bool = False) -> tuple[int, int] | None:
    """The point of a 32-byte encoding; None if it is none. `reduce` accepts y >= p (taken mod p),
    as lax verifiers do; without it such an encoding is not a point."""
    n = int.from_bytes(data, "little")
    y, sign = n & ((1 << 255) - 1), n >> 255
    if y >= P and not reduce:
        return None
    x = _x_from_y(y % P, sign)
    return None if x is None else (x, y % P)


def is_small_order(point: tuple[int, int]) -> bool:
    return mul(8, point) == IDENTITY


def secret_scalar(seed: bytes) -> int:
    h = bytearray(hashlib.sha512(seed).digest()[:32])
    h[0] &= 248
    h[31] &= 127
    h[31] |= 64
    return int.from_bytes(h, "little")


def challenge(r: bytes, a: bytes, message: bytes) -> int:
    return int.from_bytes(hashlib.sha512(r + a + message).digest(), "little") % L


def cofactorless_equation_holds(a: bytes, message: bytes, sig: bytes, *, reduce: bool = True) -> bool:
    """[S]B == R + [k]A as points (S taken as an integer, not reduced): what a lax verifier checks."""
    pa, pr = decode(a, reduce=reduce), decode(sig[:32], reduce=reduce)
    if pa is None or pr is None:
        return False
    s = int.from_bytes(sig[32:], "little")
    return mul(s, B) == add(pr, mul(challenge(sig[:32], a, message), pa))


def cofactored_equation_holds(a: bytes, message: bytes, sig: bytes) -> bool:
    """[8][S]B == [8]R + [8][k]A (ZIP-215's equation, encodings reduced mod p)."""
    pa, pr = decode(a, reduce=True), decode(sig[:32], reduce=True)
    if pa is None or pr is None:
        return False
    s = int.from_bytes(sig[32:], "little")
    return mul(8 * s, B) == mul(8, add(pr, mul(challenge(sig[:32], a, message), pa)))
