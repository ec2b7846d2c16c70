"""Knob features of a candidate, for transfer between hardware classes learned per knob.

A candidate's config is described by the knobs a node searches (pool/proposals.py,
DEFAULT_SPACE): for a numeric knob its position u in the searched range (log scale where the
knob is; 0 at the middle of the range) and u^2, so a class whose optimum for that knob sits elsewhere differs by a quadratic
in u; for a categorical knob one indicator per choice but the first. The estimator
(pool/estimator.py, `knob_transfer_sd`) learns, per foreign class and feature, how that class's
results depart from the target's, so what carries from an H100 to a Mac is measured per knob.

Guarantee: `features` is a pure function of (base, diff), finite, of length `N_FEATURES`; a
script candidate (no knobs) and a diff that no longer resolves give zeros.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from p2pgolf.protocol import candidates, knobs


def _space():
    from p2pgolf.pool.proposals import DEFAULT_SPACE  # proposals imports the estimator: import late

    return DEFAULT_SPACE


def feature_names() -> tuple[str, ...]:
    out: list[str] = []
    for d in _space():
        if d.categorical:
            out += [f"{d.name}={c}" for c in d.choices[1:]]
        else:
            out += [d.name, f"{d.name}^2"]
    return tuple(out)


N_FEATURES = len(feature_names())
_CACHE: dict[tuple[str, tuple], np.ndarray] = {}


def features(base: str, diff: Mapping[str, Any]) -> np.ndarray:
    """The feature vector of a candidate (see the module docstring)."""
    key = (base, tuple(sorted(diff.items())))
    got = _CACHE.get(key)
    if got is not None:
        return got
    out = np.zeros(N_FEATURES)
    if base and not candidates.is_script_base(base):
        try:
            config = knobs.resolve(base, diff)
        except Exception:  # a diff that no longer resolves: no features, no transfer terms
            config = None
        if config is not None:
            i = 0
            for d in _space():
                v = config.get(d.name)
                if d.categorical:
                    for c in d.choices[1:]:
                        out[i] = 1.0 if v == c else 0.0
                        i += 1
                else:
                    # centred on the middle of the range: the class offset is the level there
                    u = min(1.0, max(-1.0, d.to_unit(float(v)) - 0.5)) if v is not None else 0.0
                    out[i], out[i + 1] = u, u * u
                    i += 2
    if len(_CACHE) > 50_000:
        _CACHE.clear()
    _CACHE[key] = out
    return out
