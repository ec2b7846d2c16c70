"""Named curves: only the names libp2p refers to (P256)."""

from fastecdsa import unsupported


class Curve:
    """A named curve. Holds a name only; no arithmetic."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name

    def is_point_on_curve(self, point) -> bool:
        raise unsupported(f"{self.name}.is_point_on_curve")


P256 = Curve("P256")
