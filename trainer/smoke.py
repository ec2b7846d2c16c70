"""The offline `smoke` benchmark's text: structured, learnable, identical on every machine.

Text is generated from a fixed seed with a splitmix64 generator in integer arithmetic only (no
`random`, no `hash()`, no floats), so every Python version and platform produces the same bytes;
`protocol.benchmarks.SMOKE_VAL_SHA256` pins the validation split and a test checks it. Documents
mix templated sentences, arithmetic facts, balanced brackets, key-value records, counting runs
and copy lines: a small model's loss falls within seconds. Tokens are the bytes themselves
(vocabulary 256; one byte per token for val_bpb).

The text is cut into fixed-size blocks, each generated from its own seed, so any block can be
produced on its own: the training split (TRAIN_BLOCKS blocks, 4 MiB) is generated lazily as a
reader reaches it, and the validation split (VAL_BLOCKS blocks, 96 KiB) comes from another
stream of seeds, disjoint from training.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

SMOKE_SEED = 0x5EED_601F
BLOCK_BYTES = 32 * 1024
TRAIN_BLOCKS = 128
VAL_BLOCKS = 3
VOCAB_SIZE = 256
SPLITS = {"train": TRAIN_BLOCKS, "val": VAL_BLOCKS}

_MASK = (1 << 64) - 1


def val_bytes() -> bytes:
    """The validation split (VAL_BLOCKS * BLOCK_BYTES bytes)."""
    return b"".join(block("val", i) for i in range(VAL_BLOCKS))


def val_sha256() -> str:
    """sha256 of `val_bytes()`; must equal protocol.benchmarks.SMOKE_VAL_SHA256."""
    return hashlib.sha256(val_bytes()).hexdigest()


def val_tokens() -> np.ndarray:
    """The validation split as uint16 byte tokens."""
    return np.frombuffer(val_bytes(), dtype=np.uint8).astype(np.uint16)


def train_bytes(n_blocks: int = TRAIN_BLOCKS) -> bytes:
    """The first `n_blocks` blocks of the training split."""
    return b"".join(block("train", i) for i in range(n_blocks))


def block_tokens(split: str, index: int) -> np.ndarray:
    """One block as uint16 byte tokens (cached: the arrays are read-only)."""
    return _block_tokens(split, index)


@lru_cache(maxsize=None)
def block(split: str, index: int) -> bytes:
    """Block `index` of `split` ('train' or 'val'): exactly BLOCK_BYTES bytes of text."""
    if split not in SPLITS:
        raise ValueError(f"unknown smoke split {split!r}; expected one of {', '.join(SPLITS)}")
    if not 0 <= index < SPLITS[split]:
        raise ValueError(f"smoke {split} block {index} is outside [0, {SPLITS[split]})")
    stream = 1 if split == "train" else 2
    rng = SplitMix64(SMOKE_SEED ^ (stream << 56) ^ (index * 0x9E3779B97F4A7C15 & _MASK))
    parts: list[str] = []
    size = 0
    while size < BLOCK_BYTES:
        doc = _document(rng)
        parts.append(doc)
        size += len(doc)  # ASCII only, so characters are bytes
    return "".join(parts).encode("ascii")[:BLOCK_BYTES]


class SplitMix64:
    """splitmix64: a tiny, well-mixed 64-bit generator defined purely by integer arithmetic."""

    def __init__(self, seed: int):
        self.state = seed & _MASK

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        """An integer in [0, n). The modulo bias (< n / 2^64) does not matter for text."""
        return self.next() % n

    def pick(self, items: tuple[str, ...]) -> str:
        return items[self.below(len(items))]


@lru_cache(maxsize=None)
def _block_tokens(split: str, index: int) -> np.ndarray:
    arr = np.frombuffer(block(split, index), dtype=np.uint8).astype(np.uint16)
    arr.flags.writeable = False
    return arr


# Small closed vocabularies, so structure repeats often enough to be learnt in seconds.
_NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy")
_ANIMALS = ("cat", "dog", "fox", "owl", "bee", "cow", "hen", "elk")
_COLOURS = ("red", "blue", "green", "black", "white", "brown")
_PLACES = ("hill", "river", "barn", "forest", "field", "garden")
_VERBS = ("sees", "follows", "finds", "greets", "chases", "watches")
_CITIES = ("oslo", "lima", "kyiv", "pune", "rome", "cairo", "quito", "perth")
_JOBS = ("baker", "pilot", "nurse", "smith", "clerk", "judge")
_OPEN_CLOSE = (("(", ")"), ("[", "]"), ("{", "}"), ("<", ">"))
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _document(rng: SplitMix64) -> str:
    kind = rng.below(6)
    if kind == 0:
        body = _story(rng)
    elif kind == 1:
        body = _arithmetic(rng)
    elif kind == 2:
        body = _brackets(rng)
    elif kind == 3:
        body = _records(rng)
    elif kind == 4:
        body = _counting(rng)
    else:
        body = _copying(rng)
    return body + "\n"


def _story(rng: SplitMix64) -> str:
    lines = []
    for _ in range(2 + rng.below(4)):
        colour, animal, other = rng.pick(_COLOURS), rng.pick(_ANIMALS), rng.pick(_ANIMALS)
        place = rng.pick(_PLACES)
        lines.append(f"the {colour} {animal} {rng.pick(_VERBS)} the {other} by the {place}.")
        # The second sentence refers back to the first: learnable with context.
        lines.append(f"then the {other} runs to the {place} and the {animal} stays.")
    return "\n".join(lines) + "\n"


def _arithmetic(rng: SplitMix64) -> str:
    lines = []
    for _ in range(4 + rng.below(6)):
        a, b = rng.below(50), rng.below(50)
        if rng.below(3) == 0:
            a, b = a % 13, b % 13
            lines.append(f"{a} * {b} = {a * b}")
        else:
            lines.append(f"{a} + {b} = {a + b}")
    return "\n".join(lines) + "\n"


def _brackets(rng: SplitMix64) -> str:
    lines = []
    for _ in range(3 + rng.below(4)):
        out: list[str] = []
        stack: list[str] = []
        for _ in range(6 + rng.below(20)):
            if stack and (len(stack) >= 6 or rng.below(2) == 0):
                out.append(stack.pop())
            else:
                opener, closer = _OPEN_CLOSE[rng.below(len(_OPEN_CLOSE))]
                out.append(opener)
                stack.append(closer)
        out.extend(reversed(stack))
        lines.append("".join(out))
    return "\n".join(lines) + "\n"


def _records(rng: SplitMix64) -> str:
    lines = []
    for _ in range(3 + rng.below(5)):
        age = 20 + rng.below(50)
        lines.append(
            f"name: {rng.pick(_NAMES)}; age: {age}; city: {rng.pick(_CITIES)}; job: {rng.pick(_JOBS)}; "
            f"born: {2026 - age}"
        )
    return "\n".join(lines) + "\n"


def _counting(rng: SplitMix64) -> str:
    lines = []
    for _ in range(2 + rng.below(4)):
        if rng.below(2) == 0:
            start, step = rng.below(90), 1 + rng.below(3)
            lines.append("count: " + " ".join(str(start + step * i) for i in range(6 + rng.below(6))))
        else:
            start = rng.below(len(_LETTERS) - 8)
            lines.append("letters: " + " ".join(_LETTERS[start : start + 5 + rng.below(4)]))
    return "\n".join(lines) + "\n"


def _copying(rng: SplitMix64) -> str:
    lines = []
    for _ in range(3 + rng.below(4)):
        word = "".join(_LETTERS[rng.below(26)] for _ in range(3 + rng.below(6)))
        lines.append(f"echo {word} -> {word}")
    return "\n".join(lines) + "\n"
