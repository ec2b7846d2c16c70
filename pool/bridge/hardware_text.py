"""A hardware class from what a record folder says: nvidia-smi rows in a log, or a free string.

Names follow what `trainer.hardware.detect_hardware` records for the same machine
(`cuda:NVIDIA H100 80GB HBM3:x8`), so an imported 8xH100 result lands in the same class as a
node's own 8xH100 runs. `from_log` trusts the device rows (and world_size for the count);
`from_text` reads strings like "8xH100 80GB SXM", "8x NVIDIA H100", "1x A100 40GB".
Both return None when they cannot tell; they never guess a count.
"""

from __future__ import annotations

import re

from p2pgolf.protocol.records import HardwareClass

# Free-string spellings -> the name the CUDA driver reports (what our own runs record).
_KNOWN = (
    (re.compile(r"H100.*(PCIE|PCI-E)", re.I), "NVIDIA H100 PCIe", 81559),
    (re.compile(r"H100.*NVL", re.I), "NVIDIA H100 NVL", 95830),
    (re.compile(r"H100", re.I), "NVIDIA H100 80GB HBM3", 81559),
    (re.compile(r"H200", re.I), "NVIDIA H200", 143771),
    (re.compile(r"A100.*40", re.I), "NVIDIA A100-SXM4-40GB", 40960),
    (re.compile(r"A100", re.I), "NVIDIA A100-SXM4-80GB", 81920),
    (re.compile(r"B200", re.I), "NVIDIA B200", 183359),
    (re.compile(r"GB10\b", re.I), "NVIDIA GB10", 0),
    (re.compile(r"RTX\s*4090", re.I), "NVIDIA GeForce RTX 4090", 24564),
    (re.compile(r"RTX\s*3090", re.I), "NVIDIA GeForce RTX 3090", 24576),
)
_COUNT = re.compile(r"^\s*(\d+)\s*[x×]\s*", re.I)


def from_log(gpus: tuple[str, ...], world_size: int | None, memory_mib: int | None) -> HardwareClass | None:
    """The class of the GPUs a log's nvidia-smi rows list; world_size, when printed, is the count used."""
    if not gpus:
        return None
    names = sorted(set(gpus))
    model = names[0] if len(names) == 1 else "mixed " + " + ".join(names)
    count = world_size if world_size and world_size <= len(gpus) else len(gpus)
    return HardwareClass(accel="cuda", model=model[:80], count=count, memory_mib=memory_mib or 0)


def from_text(text: str) -> HardwareClass | None:
    """The class a free hardware string names, or None when it names no known GPU or no count.
    A string naming several machines ("2x H100 ..., developed on 1x GB10") is read up to its first comma."""
    if not text:
        return None
    head = text.split(",")[0].split(";")[0]
    m = _COUNT.match(head)
    if not m:
        return None
    count = int(m.group(1))
    if not 1 <= count <= 4096:
        return None
    for pattern, name, memory in _KNOWN:
        if pattern.search(head):
            return HardwareClass(accel="cuda", model=name, count=count, memory_mib=memory)
    return None
