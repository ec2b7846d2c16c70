"""Integer helpers."""


def int_bytelen(n: int) -> int:
    """Bytes needed to write the non-negative `n` big-endian (0 for 0), as upstream's helper."""
    return (n.bit_length() + 7) // 8
