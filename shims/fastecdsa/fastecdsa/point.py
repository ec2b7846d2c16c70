"""Curve points: the type libp2p names; constructing one raises."""

from fastecdsa import unsupported


class Point:
    def __init__(self, x: int, y: int, curve=None) -> None:
        raise unsupported("fastecdsa.point.Point")
