"""Cyclic garbage collection paused around a decision.

An estimate and a bandit choice over a large pool make ~10^5 short-lived objects and no cycles;
each full collection they would trigger walks the whole pool's evidence (~10^5 objects, 0.1-0.2 s
each), several times per decision. Refcounting frees memory as usual meanwhile.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["gc_paused"]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Collection off for the block, and back on afterwards if it was on (nesting is safe)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()
