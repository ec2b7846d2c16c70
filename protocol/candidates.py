"""Candidates of both kinds and their ids: (base, diff, tokenizer).

- built-in: `base` names a base config of protocol/knobs.py and `diff` is a knob diff;
- script: `base` is `"script:" + sha256hex(script bytes)` and `diff` maps the script's own
  hyperparameter names (environment-variable style) to int, float, bool or str values.

A node may not hold the script a record names, so a script diff on the wire is checked by shape
only (names, value types, sizes); `protocol.script_hparams.ScriptVocabulary.check_diff` checks
it against the script's own vocabulary once the script is held. The candidate id hashes
(base, normalised diff, tokenizer), so results of one configuration aggregate whoever ran them.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from typing import Any

from p2pgolf.protocol import canonical, knobs
from p2pgolf.protocol.errors import ProtocolError

SCRIPT_PREFIX = "script:"
CANDIDATE_DOMAIN = b"p2pgolf/candidate/v2\n"
MAX_SCRIPT_DIFF_ENTRIES = 64
MAX_SCRIPT_STR = 256
HPARAM_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
TOKENIZER_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")

_HEX64 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def is_script_base(base: Any) -> bool:
    """True if `base` names a script (`script:<sha256 hex>`), whether or not it is well formed."""
    return isinstance(base, str) and base.startswith(SCRIPT_PREFIX)


def script_sha(base: str) -> str:
    """The script's SHA-256 hex from a script base; ProtocolError if `base` is not one."""
    if not is_script_base(base) or not _HEX64.fullmatch(base[len(SCRIPT_PREFIX):]):
        raise ProtocolError(f"{base!r} is not a script base ({SCRIPT_PREFIX}<64 lowercase hex>)", "base")
    return base[len(SCRIPT_PREFIX):]


def script_base(sha: str) -> str:
    """The base naming the script with this SHA-256 hex; ProtocolError if `sha` is not one."""
    if type(sha) is not str or not _HEX64.fullmatch(sha):
        raise ProtocolError(f"{sha!r} is not 64 lowercase hex characters", "script sha256")
    return SCRIPT_PREFIX + sha


def check_tokenizer(name: Any) -> str:
    """A tokenizer variant name (`sp1024`, `byte256`, ...): 1-32 of [a-z0-9._-], starting alphanumeric."""
    if type(name) is not str or not TOKENIZER_NAME.fullmatch(name):
        raise ProtocolError(f"{name!r} is not a tokenizer name (1-32 characters of a-z 0-9 . _ -, starting with a letter or digit)", "tokenizer")
    return name


def check_script_value(name: Any, value: Any) -> Any:
    """One script hyperparameter entry by shape; returns the value in canonical form (-0.0 becomes 0.0)."""
    if type(name) is not str or not HPARAM_NAME.fullmatch(name):
        raise ProtocolError(f"{name!r} is not a hyperparameter name ([A-Z][A-Z0-9_]{{0,63}})", "script diff")
    where = f"hyperparameter {name}"
    if type(value) in (bool, int):
        if type(value) is int and not -(2**63) <= value < 2**64:
            raise ProtocolError(f"{value} is outside the 64-bit integer range", where)
        return value
    if type(value) is float:
        if not math.isfinite(value):
            raise ProtocolError(f"{value!r} is not a finite number", where)
        return value + 0.0
    if type(value) is str:
        if len(value) > MAX_SCRIPT_STR:
            raise ProtocolError(f"{len(value)} characters; at most {MAX_SCRIPT_STR}", where)
        if _CONTROL.search(value):
            raise ProtocolError("control characters are not allowed", where)
        return value
    raise ProtocolError(f"expected an int, float, bool or string, got {type(value).__name__}", where)


def normalise_script_diff(diff: Mapping[str, Any]) -> dict[str, Any]:
    """A script diff checked by shape, keys sorted, values canonical."""
    if not isinstance(diff, Mapping):
        raise ProtocolError("script diff must be a map of hyperparameter names to values", "diff")
    if len(diff) > MAX_SCRIPT_DIFF_ENTRIES:
        raise ProtocolError(f"script diff has {len(diff)} entries; at most {MAX_SCRIPT_DIFF_ENTRIES}", "diff")
    return {name: check_script_value(name, diff[name]) for name in sorted(diff, key=_sort_key)}


def normalise_diff(base: str, diff: Mapping[str, Any]) -> dict[str, Any]:
    """The normal form of either kind's diff (for a built-in base, entries equal to the base dropped)."""
    if is_script_base(base):
        script_sha(base)
        return normalise_script_diff(diff)
    return knobs.normalise_diff(base, diff)


def check_normalised(base: Any, diff: Any) -> None:
    """Validate a (base, diff) as it arrives from the wire: the diff must already be in normal
    form. Built-in: knob vocabulary and consistency (knobs.check_normalised); script: shape only."""
    if type(base) is not str:
        raise ProtocolError("must be a string", "base")
    if not isinstance(diff, dict):
        raise ProtocolError("must be a map of names to values", "diff")
    if not is_script_base(base):
        knobs.check_normalised(base, diff)
        return
    script_sha(base)
    normal = normalise_script_diff(diff)
    for name, value in diff.items():
        # repr tells -0.0 from 0.0, which compare equal but encode differently
        if repr(normal[name]) != repr(value):
            raise ProtocolError("diff is not normalised: -0.0 is written 0.0", f"hyperparameter {name}")


def candidate_id(base: str, diff: Mapping[str, Any], tokenizer: str) -> str:
    """Hex SHA-256 over the domain and canonical {"base", "diff" (normalised), "tokenizer"}."""
    if type(base) is not str or type(tokenizer) is not str or not isinstance(diff, Mapping) or not all(type(k) is str and type(v) in _SCALARS for k, v in diff.items()):
        return _candidate_id(base, diff, tokenizer)
    # Type and repr make the key exact: 1, 1.0 and True (and 0.0 and -0.0) hash alike otherwise.
    key = (base, tokenizer, tuple((k, type(v), repr(v)) for k, v in diff.items()))
    cid = _CACHE.get(key)
    if cid is None:
        cid = _candidate_id(base, diff, tokenizer)  # raises for a bad diff: only successes are cached
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        _CACHE[key] = cid
    return cid


def _candidate_id(base: str, diff: Mapping[str, Any], tokenizer: str) -> str:
    payload = canonical.encode({"base": base, "diff": normalise_diff(base, diff), "tokenizer": check_tokenizer(tokenizer)})
    return hashlib.sha256(CANDIDATE_DOMAIN + payload).hexdigest()


def _sort_key(name: Any) -> bytes:
    return name.encode() if isinstance(name, str) else repr(name).encode()


_SCALARS = (str, int, float, bool, type(None))
# A pool holds many results per candidate (seeds, hardware), so ids repeat; dict ops are atomic.
_CACHE: dict[tuple, str] = {}
_CACHE_MAX = 4096
