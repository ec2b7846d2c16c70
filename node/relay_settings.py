"""What a node offers as a circuit relay and asks of relays: `RelaySettings` (config.toml's
[relay] table and join's relay flags). A plain value, cheap to import (node/config.py reads it);
node/relay.py does the relaying."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RelaySettings:
    """What this node offers as a relay and asks of relays. Defaults are libp2p's where they
    suit: 4 reservations, 8 circuits per reservation, an hour per circuit; 64 MiB per circuit
    (libp2p: 1 GiB) bounds what one relayed peer costs us while leaving room for an artifact."""

    service: bool = True  # serve as a relay when reachable (`join --no-relay-service`: never)
    max_reservations: int = 4
    max_circuits: int = 8  # open circuits per reservation
    circuit_bytes: int = 64 * 1024 * 1024  # per circuit, both directions together
    circuit_duration_s: int = 3600
    reservations: int = 2  # relays an unreachable node reserves a slot on
    hole_punch: bool = True  # upgrade relayed connections to direct ones (DCUtR)

    def __post_init__(self) -> None:
        for name, least in (("max_reservations", 0), ("max_circuits", 0), ("reservations", 0), ("circuit_bytes", 1), ("circuit_duration_s", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"relay {name} must be a whole number >= {least}, not {value!r}")

    def limits(self) -> Any:
        from libp2p.relay.circuit_v2.resources import RelayLimits

        return RelayLimits(duration=self.circuit_duration_s, data=self.circuit_bytes, max_circuit_conns=self.max_circuits, max_reservations=self.max_reservations)
