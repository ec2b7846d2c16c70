"""The encoding checks of SPEC.md section 6.1's Ed25519 rule, made after libsodium's equation.

libsodium (through PyNaCl) computes the cofactorless equation and compares R's bytes; the
encoding checks it also makes (depending on its version and build) are made here explicitly,
so the rule is the same on every build and is what the SPEC says:
- S (the second 32 bytes, little-endian) is below the group order L;
- A (the author key) and R (the first 32 bytes) encode y below p = 2^255 - 19 (the top bit is
  x's sign), and neither is a point of small order (order 1, 2, 4 or 8: one of the 7 y values
  in SMALL_ORDER_Y, whatever the sign bit); a key or R that is not on the curve fails libsodium.
Mixed-order points (a large-order point plus a small-order one) are not refused here: the
cofactorless equation decides.
"""

from __future__ import annotations

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
_Y_MASK = (1 << 255) - 1
# y of every point of small order, canonical (y < p) and not (p, p + 1): encodings with these y
# are refused with either sign bit. The two large ones are the y of the four points of order 8.
SMALL_ORDER_Y = frozenset({
    0,  # order 4 (x = ±sqrt(-1))
    1,  # the identity (order 1)
    P - 1,  # order 2
    0x05FC536D880238B13933C6D305ACDFD5F098EFF289F4C345B027B2C28F95E826,  # order 8
    0x7A03AC9277FDC74EC6CC392CFA53202A0F67100D760B3CBA4FD84D3D706A17C7,  # order 8
    P,  # 0 written as p
    P + 1,  # 1 written as p + 1
})  # fmt: skip


def encoding_problem(public_key: bytes, signature: bytes) -> tuple[str, str] | None:
    """(field, reason) for the first rule that `public_key` (32 bytes) and `signature` (64
    bytes) break, or None when the equation is left to decide."""
    if int.from_bytes(signature[32:], "little") >= L:
        return "sig", "S is not below the group order L (non-canonical signature)"
    for field, encoded, what in (("author", public_key, "public key"), ("sig", signature[:32], "R")):
        y = int.from_bytes(encoded, "little") & _Y_MASK
        if y in SMALL_ORDER_Y:
            return field, f"{what} is a point of small order"
        if y >= P:
            return field, f"{what} is a non-canonical encoding (y >= 2^255 - 19)"
    return None
