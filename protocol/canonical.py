"""Canonical msgpack: exactly one byte string for each value.

Rules (see SPEC.md): maps have string keys, sorted by their UTF-8 bytes, no duplicates; integers
use the shortest msgpack form and fit in int64/uint64; floats are always float64 and finite;
strings are UTF-8 `str`, binary is `bin`; no extension types. `decode` accepts only bytes that
`encode` would produce for the decoded value, so every logical record has one encoding.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import lru_cache
from itertools import repeat
from typing import Any

import msgpack

from p2pgolf.protocol.errors import ProtocolError

MAX_DEPTH = 8


def encode(value: Any) -> bytes:
    """Canonical bytes of `value` (dicts with str keys, lists, str, bytes, int, float, bool, None)."""
    _check(value, "value", 0)
    return msgpack.packb(_sorted(value), use_bin_type=True, use_single_float=False, strict_types=False)


@dataclass(frozen=True)
class Bounds:
    """What one decode may allocate, checked before it does: objects in all (every map key,
    map value and list item counts), items in one container, nesting, and string sizes."""

    max_items: int
    max_container: int
    max_str: int
    max_bin: int
    max_depth: int = MAX_DEPTH


def decode(data: bytes, *, max_len: int, bounds: Bounds | None = None) -> Any:
    """Decode canonical bytes; raise ProtocolError unless `data` is canonical and within bounds.
    With `bounds`, the shape is checked by a pass that builds nothing before any object is made,
    so a frame of millions of empty maps costs a scan, not their memory."""
    if type(data) is not bytes:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ProtocolError(f"expected bytes, got {type(data).__name__}")
        data = bytes(data)
    if len(data) > max_len:
        raise ProtocolError(f"{len(data)} bytes exceeds the limit of {max_len}")
    if bounds is not None:
        check_bounds(data, bounds)
        limits = dict(max_str_len=bounds.max_str, max_bin_len=bounds.max_bin, max_array_len=bounds.max_container, max_map_len=bounds.max_container)
        try:
            value = msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_no_ext, **limits)
            if _walk_is_canonical(value) and _repack(value) == data:
                return value
        except Exception:
            pass
        return _decode_precisely(data, max_len)
    # Fast path (every record a peer sends comes through here): plain C unpacking, one walk for
    # key order and float finiteness, one re-pack. Duplicate keys collapse while unpacking, so the
    # re-pack comes out shorter and differs. Anything odd is decoded again by the slow, precise path
    # for its error message.
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_no_ext, **_limits(max_len))
        if _walk_is_canonical(value) and _repack_fast(value) == data:
            return value
    except Exception:
        pass
    return _decode_precisely(data, max_len)


_MAP_HEADS = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])
_ARRAY_HEADS = frozenset([*range(0x90, 0xA0), 0xDC, 0xDD])


def check_bounds(data: bytes, bounds: Bounds) -> None:
    """Raise ProtocolError if decoding `data` would make more objects, longer containers or
    strings, or deeper nesting than `bounds` allows. Reads headers only; allocates nothing
    per object. Every object takes at least one byte, so data no longer than `max_items` needs
    no count (only the per-container and depth limits, which msgpack and `_check` apply)."""
    unpacker = msgpack.Unpacker(
        raw=False, max_buffer_size=max(len(data), 1), max_str_len=bounds.max_str, max_bin_len=bounds.max_bin,
        max_array_len=bounds.max_container, max_map_len=bounds.max_container, max_ext_len=0,
    )
    unpacker.feed(data)
    pending = [1]  # objects still to read at each open level
    items = 0
    try:
        while pending:
            if pending[-1] == 0:
                pending.pop()
                continue
            pending[-1] -= 1
            pos = unpacker.tell()
            if pos >= len(data):
                raise ProtocolError("data ends inside a container")
            head = data[pos]
            if head in _MAP_HEADS:
                n = 2 * unpacker.read_map_header()
            elif head in _ARRAY_HEADS:
                n = unpacker.read_array_header()
            else:
                unpacker.skip()
                continue
            items += n
            if items > bounds.max_items:
                raise ProtocolError(f"more than {bounds.max_items} objects in one message")
            if len(pending) > bounds.max_depth:
                raise ProtocolError(f"nesting deeper than {bounds.max_depth}")
            pending.append(n)
        if unpacker.tell() != len(data):
            raise ProtocolError("trailing bytes after the message")
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack's own limits (container or string too long) and malformed input
        raise ProtocolError(f"malformed or oversized msgpack ({type(exc).__name__}: {exc})") from None


@lru_cache(maxsize=64)
def _limits(max_len: int) -> dict[str, int]:
    return dict(max_str_len=max_len, max_bin_len=max_len, max_array_len=max_len, max_map_len=max_len)


def _repack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True, use_single_float=False)


_packers = threading.local()


def _repack_fast(value: Any) -> bytes:
    """`_repack` with this thread's own Packer (a Packer is not thread-safe; making one per call
    costs a third of the re-pack, and the fast path runs once per record a peer sends)."""
    pack = getattr(_packers, "pack", None)
    if pack is None:
        pack = _packers.pack = msgpack.Packer(use_bin_type=True, use_single_float=False, autoreset=True).pack
    return pack(value)


def _walk_is_canonical(value: Any) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is dict:
            keys = list(v)
            if not all(map(isinstance, keys, repeat(str))) or keys != sorted(keys):
                return False
            stack.extend(v.values())
        elif t is list:
            stack.extend(v)
        elif t is float and (v - v) != 0.0:  # inf - inf and nan - nan are nan
            return False
    return True


def _decode_precisely(data: bytes, max_len: int) -> Any:
    """The slow path: checks as it decodes, so the error names the first rule broken."""
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            object_pairs_hook=_canonical_map,
            list_hook=_finite_list,
            ext_hook=_no_ext,
            **_limits(max_len),
        )
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises several types for malformed input
        raise ProtocolError(f"malformed msgpack ({type(exc).__name__}: {exc})") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ProtocolError("NaN and infinity are not allowed")
    # Maps were checked for order as they were built, so re-packing in decoded order must give
    # the same bytes; any difference is a non-shortest integer, a float32, or a str/bin mix-up.
    if _repack(value) != data:
        raise ProtocolError("bytes are not in canonical form (integer, float or string encoding)")
    return value


def _canonical_map(pairs: list[tuple[Any, Any]]) -> dict:
    # Hot path for every record a peer sends: checks use C-level builtins where possible.
    out = dict(pairs)
    keys = list(out)
    if len(keys) != len(pairs):
        raise ProtocolError("map has duplicate keys")
    if not all(map(isinstance, keys, repeat(str))):
        raise ProtocolError("map keys must be strings")
    # Python orders str by code point, which is also the order of their UTF-8 bytes.
    if keys != sorted(keys):
        raise ProtocolError("map keys are not sorted")
    _finite_list(out.values())
    return out


def _finite_list(items):
    if float in set(map(type, items)):
        for v in items:
            if type(v) is float and (v - v) != 0.0:  # inf - inf and nan - nan are nan
                raise ProtocolError("NaN and infinity are not allowed")
    return items


def _no_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"extension type {code} is not allowed")


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value, key=lambda s: s.encode())}
    if isinstance(value, (list, tuple)):
        return [_sorted(v) for v in value]
    return value


def _check(value: Any, where: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ProtocolError(f"nesting deeper than {MAX_DEPTH}", where)
    if value is None or isinstance(value, (bool, str, bytes)):
        return
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise ProtocolError("integer out of 64-bit range", where)
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ProtocolError("NaN and infinity are not allowed", where)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ProtocolError("map keys must be strings", where)
            _check(v, f"{where}.{k}", depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check(v, f"{where}[{i}]", depth + 1)
        return
    raise ProtocolError(f"type {type(value).__name__} cannot be encoded", where)
