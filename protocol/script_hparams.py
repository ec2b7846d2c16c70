"""Read a training script's hyperparameter vocabulary from its source, without running it.

Competition scripts read their settings from the environment, as the challenge's train_gpt.py
does: `int(os.environ.get("ITERATIONS", 20000))`, `bool(int(os.environ.get("TIE_EMBEDDINGS",
"1")))`. `read_hyperparameters` parses the source with `ast` (never executes it) and finds every
`os.environ.get(NAME, default)` / `os.getenv(NAME, default)` / `os.environ[NAME]`, its cast
(int, float, bool, str, and `bool(int(...))`) and its default when that is a literal, arithmetic
on literals, or a name assigned earlier from one. Self-extracting wrappers
(`exec(lzma.decompress(base64.b85decode("...")))` and the like, with base64/base85, lzma, zlib,
bz2 and gzip) are decoded and the inner source is parsed; nothing is ever passed to exec.

What cannot be read is named: a source that does not parse, a wrapper that cannot be decoded
or no hyperparameters at all raise `ScriptParseError`; a default that is not a constant leaves
that hyperparameter without a default and a line in `ScriptVocabulary.problems`.

Pure parsing (no torch, no I/O), so pool/ and trainer/ can both use it.
"""

from __future__ import annotations

import ast
import base64
import bz2
import gzip
import lzma
import math
import operator
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from p2pgolf.protocol.candidates import HPARAM_NAME, MAX_SCRIPT_DIFF_ENTRIES, check_script_value
from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.knobs import parse_bool_text

# The runner sets these itself (data, tokenizer, seed, wall-clock cap, run id): a diff may not.
RUNNER_SET = frozenset({"DATA_PATH", "TOKENIZER_PATH", "SEED", "MAX_WALLCLOCK_SECONDS", "RUN_ID"})
# A number's allowed (and searched) range unless stated: [default / FACTOR, default * FACTOR];
# searches move within it by multiplicative steps (pool/script_proposals.py).
RANGE_FACTOR = 16.0
MAX_SOURCE_BYTES = 8 * 1024 * 1024  # a decoded wrapper larger than this is refused
MAX_WRAPPER_DEPTH = 4

_CASTS = {"int": int, "float": float, "bool": bool, "str": str}


class ScriptParseError(ProtocolError):
    """A script's hyperparameters could not be read; the message says what and where."""


@dataclass(frozen=True)
class ScriptHparam:
    """One hyperparameter: env-var name, type (int, float, bool, str), default (None if unreadable
    or required), and the mutation range for numbers (None: not searched unless stated)."""

    name: str
    type: type
    default: Any
    low: float | None = None
    high: float | None = None
    line: int = 0

    @property
    def searchable(self) -> bool:
        """True if a search may move it: a bool with a default, or a number with a range."""
        if self.type is bool:
            return self.default is not None
        return self.type in (int, float) and self.low is not None and self.high is not None and self.low < self.high

    def check(self, value: Any) -> Any:
        """The value in this hyperparameter's type, or ProtocolError naming it, the value and the rule."""
        where = f"hyperparameter {self.name}"
        check_script_value(self.name, value)
        if self.type is bool:
            if type(value) is not bool:
                raise ProtocolError(f"expected true or false, got {value!r}", where)
            return value
        if self.type is str:
            if type(value) is not str:
                raise ProtocolError(f"expected a string, got {value!r}", where)
            return value
        if type(value) not in (int, float):
            raise ProtocolError(f"expected a number, got {value!r}", where)
        if self.type is int:
            if type(value) is float:
                if not value.is_integer():
                    raise ProtocolError(f"expected an integer, got {value!r}", where)
                value = int(value)
        else:
            value = float(value) + 0.0
        if self.low is not None and self.high is not None and not self.low <= value <= self.high:
            raise ProtocolError(f"{value!r} is outside the allowed range [{self.low:g}, {self.high:g}]", where)
        return value

    def parse(self, text: str) -> Any:
        """A command-line string (`--set NAME=value`) as a checked value."""
        where = f"hyperparameter {self.name}"
        if self.type is bool:
            return parse_bool_text(text, where)
        if self.type is str:
            return self.check(text)
        try:
            number = float(text)
        except ValueError:
            raise ProtocolError(f"expected a number, got {text!r}", where) from None
        return self.check(number)


@dataclass(frozen=True)
class ScriptVocabulary:
    """A script's hyperparameters by name, and what could not be read."""

    params: Mapping[str, ScriptHparam]
    problems: tuple[str, ...] = ()
    wrapped: bool = False  # the source was a self-extracting wrapper
    inner_source: str = field(default="", repr=False)

    def __getitem__(self, name: str) -> ScriptHparam:
        return self.params[name]

    def __contains__(self, name: object) -> bool:
        return name in self.params

    def __len__(self) -> int:
        return len(self.params)

    def defaults(self) -> dict[str, Any]:
        """Name -> default for the hyperparameters whose default could be read."""
        return {n: p.default for n, p in self.params.items() if p.default is not None}

    def check_diff(self, diff: Mapping[str, Any]) -> dict[str, Any]:
        """The diff checked against this vocabulary and normalised (canonical types, entries
        equal to the default dropped, keys sorted). ProtocolError naming an unknown name, a name
        the runner sets itself, a wrong type or a value out of range."""
        if not isinstance(diff, Mapping):
            raise ProtocolError("script diff must be a map of hyperparameter names to values")
        if len(diff) > MAX_SCRIPT_DIFF_ENTRIES:
            raise ProtocolError(f"script diff has {len(diff)} entries; at most {MAX_SCRIPT_DIFF_ENTRIES}")
        out: dict[str, Any] = {}
        for name in sorted(diff):
            if name in RUNNER_SET:
                raise ProtocolError(f"{name} is set by the runner, not by a diff", f"hyperparameter {name}")
            if name not in self.params:
                import difflib

                close = difflib.get_close_matches(str(name), self.params, n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise ProtocolError(f"unknown hyperparameter {name!r}: the script does not read it{hint}")
            param = self.params[name]
            value = param.check(diff[name])
            if param.default is not None and type(value) is type(param.default) and value == param.default:
                continue
            out[name] = value
        return out

    def with_ranges(self, ranges: Mapping[str, tuple[float, float]]) -> "ScriptVocabulary":
        """The same vocabulary with user-stated ranges replacing the defaults' ranges."""
        params = dict(self.params)
        for name, (low, high) in ranges.items():
            if name not in params:
                raise ProtocolError(f"unknown hyperparameter {name!r}: the script does not read it")
            if params[name].type not in (int, float):
                raise ProtocolError(f"only numbers take a range; {name} is {params[name].type.__name__}")
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                raise ProtocolError(f"range [{low}, {high}] is not a finite interval", f"hyperparameter {name}")
            params[name] = replace(params[name], low=float(low), high=float(high))
        return replace(self, params=params)

    def searchable(self) -> list[ScriptHparam]:
        """The hyperparameters a search may move (numbers with a range, bools), by name."""
        return [p for n, p in sorted(self.params.items()) if p.searchable and n not in RUNNER_SET]


def default_range(type_: type, default: Any) -> tuple[float | None, float | None]:
    """A bounded multiplicative range around a number's default; (None, None) for zero or non-numbers."""
    if type_ not in (int, float) or default is None or isinstance(default, bool) or default == 0:
        return None, None
    a, b = default / RANGE_FACTOR, default * RANGE_FACTOR
    low, high = min(a, b), max(a, b)
    if type_ is int:
        low, high = math.floor(low), math.ceil(high)
        if default > 0:
            low = max(1, low)
        return int(low), int(high)
    return float(low), float(high)


def read_hyperparameters(source: bytes | str) -> ScriptVocabulary:
    """The hyperparameter vocabulary of a script's source; ScriptParseError if it cannot be read."""
    text = _as_text(source, "script")
    wrapped = False
    for _ in range(MAX_WRAPPER_DEPTH + 1):
        tree = _parse(text, "script" if not wrapped else "decoded wrapper")
        inner = _unwrap(tree)
        if inner is None:
            break
        text, wrapped = inner, True
    else:
        raise ScriptParseError(f"more than {MAX_WRAPPER_DEPTH} nested self-extracting wrappers")
    params, problems = _Reader().read(tree)
    if not params:
        raise ScriptParseError("no hyperparameters found: the script reads no os.environ.get(NAME, default) / os.getenv(NAME, default)")
    return ScriptVocabulary(params=params, problems=tuple(problems), wrapped=wrapped, inner_source=text)


def _as_text(source: bytes | str, what: str) -> str:
    if isinstance(source, bytes):
        if len(source) > MAX_SOURCE_BYTES:
            raise ScriptParseError(f"{what} is {len(source)} bytes; at most {MAX_SOURCE_BYTES}")
        try:
            return source.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ScriptParseError(f"{what} is not UTF-8 text (byte {exc.start})") from None
    if not isinstance(source, str):
        raise ScriptParseError(f"{what} must be bytes or str, got {type(source).__name__}")
    return source


def _parse(text: str, what: str) -> ast.Module:
    try:
        return ast.parse(text)
    except SyntaxError as exc:
        raise ScriptParseError(f"{what} is not valid Python: {exc.msg} at line {exc.lineno}") from None
    except ValueError as exc:  # null bytes
        raise ScriptParseError(f"{what} is not valid Python: {exc}") from None


# ---- self-extracting wrappers ----------------------------------------------------------------

_DECODERS = {
    ("base64", "b85decode"): base64.b85decode,
    ("base64", "b64decode"): base64.b64decode,
    ("base64", "a85decode"): base64.a85decode,
    ("base64", "b32decode"): base64.b32decode,
    ("lzma", "decompress"): None,  # size-capped below
    ("zlib", "decompress"): None,
    ("bz2", "decompress"): None,
    ("gzip", "decompress"): None,
}


def _unwrap(tree: ast.Module) -> str | None:
    """The inner source if the module is a wrapper (an exec of a decodable expression), else None."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "exec" and node.args:
            value = _decode_expr(node.args[0], _module_constants(tree), _import_aliases(tree))
            if isinstance(value, bytes):
                return _as_text(value, "decoded wrapper")
            if isinstance(value, str):
                return value
            raise ScriptParseError(f"line {node.lineno}: exec of an expression that is not a decodable literal (base64/base85 with lzma/zlib/bz2/gzip)")
    return None


def _module_constants(tree: ast.Module) -> dict[str, Any]:
    """Top-level `NAME = "literal"` assignments (wrappers sometimes name their payload)."""
    out: dict[str, Any] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            if isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, (str, bytes)):
                out[stmt.targets[0].id] = stmt.value.value
    return out


def _import_aliases(tree: ast.Module) -> dict[str, tuple[str, str | None]]:
    """Local name -> (module, attribute or None) for imports of the decoder modules."""
    modules = {m for m, _ in _DECODERS}
    out: dict[str, tuple[str, str | None]] = {m: (m, None) for m in modules}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in modules:
                    out[a.asname or a.name] = (a.name, None)
        elif isinstance(node, ast.ImportFrom) and node.module in modules:
            for a in node.names:
                out[a.asname or a.name] = (node.module, a.name)
    return out


def _decode_expr(node: ast.AST, names: Mapping[str, Any], aliases: Mapping[str, tuple[str, str | None]]) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
        return node.value
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ("decode", "encode") and not node.keywords and len(node.args) <= 1:
            inner = _decode_expr(func.value, names, aliases)
            if func.attr == "decode" and isinstance(inner, bytes):
                return _as_text(inner, "decoded wrapper")
            if func.attr == "encode" and isinstance(inner, str):
                return inner.encode("utf-8")
            return None
        key = _dotted(func, aliases)
        if key in _DECODERS and node.args:
            data = _decode_expr(node.args[0], names, aliases)
            if isinstance(data, str):
                data = data.encode("ascii", "replace")
            if not isinstance(data, bytes):
                return None
            try:
                return _run_decoder(key, data)
            except ScriptParseError:
                raise
            except Exception as exc:
                raise ScriptParseError(f"line {node.lineno}: the wrapper's {key[0]}.{key[1]} payload does not decode ({type(exc).__name__}: {exc})") from None
    return None


def _dotted(func: ast.AST, aliases: Mapping[str, tuple[str, str | None]]) -> tuple[str, str] | None:
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        module, attr = aliases.get(func.value.id, (None, None))
        return (module, func.attr) if module and attr is None else None
    if isinstance(func, ast.Name) and func.id in aliases:
        module, attr = aliases[func.id]
        return (module, attr) if attr else None
    return None


def _run_decoder(key: tuple[str, str], data: bytes) -> bytes:
    module, _ = key
    if module == "base64":
        return _DECODERS[key](data)
    if module == "lzma":
        d = lzma.LZMADecompressor()
        out = d.decompress(data, max_length=MAX_SOURCE_BYTES + 1)
    elif module == "zlib":
        d = zlib.decompressobj()
        out = d.decompress(data, MAX_SOURCE_BYTES + 1)
    elif module == "bz2":
        d = bz2.BZ2Decompressor()
        out = d.decompress(data, max_length=MAX_SOURCE_BYTES + 1)
    else:
        import io

        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            out = f.read(MAX_SOURCE_BYTES + 1)
    if len(out) > MAX_SOURCE_BYTES:
        raise ScriptParseError(f"the wrapper decodes to more than {MAX_SOURCE_BYTES} bytes")
    if module != "gzip" and not d.eof:
        raise ValueError("the compressed data is truncated")
    return out


# ---- hyperparameter reads ----------------------------------------------------------------------

_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}


class _Unreadable(Exception):
    pass


class _Reader:
    """Walks a module in source order, remembering constants assigned so far."""

    def __init__(self) -> None:
        self.params: dict[str, ScriptHparam] = {}
        self.problems: list[str] = []
        self.known: dict[str, Any] = {}  # names assigned a readable constant so far

    def read(self, tree: ast.Module) -> tuple[dict[str, ScriptHparam], list[str]]:
        self._block(tree.body)
        return dict(sorted(self.params.items())), self.problems

    def _block(self, body: list[ast.stmt]) -> None:
        for stmt in body:
            self._stmt(stmt)

    def _stmt(self, stmt: ast.stmt) -> None:
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            value = stmt.value
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            if value is None:
                return
            result = self._expr_reads(value)
            for target in targets:
                name = target.id if isinstance(target, ast.Name) else target.attr if isinstance(target, ast.Attribute) else None
                if name is None:
                    continue
                try:
                    self.known[name] = result if result is not None else self._const(value)
                except _Unreadable:
                    self.known.pop(name, None)
            return
        # other statements: find reads anywhere inside, then descend into nested blocks in order
        for child_body in _child_blocks(stmt):
            self._block(child_body)
        for node in _shallow_exprs(stmt):
            self._expr_reads(node)

    def _expr_reads(self, node: ast.AST) -> Any:
        """Record every env read inside `node`; return the value if `node` itself is one with a readable default."""
        top = self._env_read(node)
        for sub in ast.walk(node):
            if sub is node:
                continue
            if isinstance(sub, ast.Call):
                self._env_read(sub)
        return top

    def _env_read(self, node: ast.AST) -> Any:
        """If `node` is a (cast of an) env read, record the hyperparameter; return its default or None."""
        casts: list[str] = []
        inner = node
        while isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name) and inner.func.id in _CASTS and len(inner.args) == 1 and not inner.keywords:
            casts.append(inner.func.id)
            inner = inner.args[0]
        read = _env_get(inner)
        if read is None:
            return None
        name, default_node, lineno = read
        if name in self.params and not casts:
            return self.params[name].default  # a bare inner read already recorded by its cast
        if name in self.params and self.params[name].line == lineno and self.params[name].type is not str:
            return self.params[name].default
        type_ = _CASTS[casts[0]] if casts else str
        default: Any = None
        if default_node is not None:
            try:
                raw = self._const(default_node)
                default = _apply_casts(raw, list(reversed(casts)) or ["str"])
            except _Unreadable:
                self.problems.append(f"{name} (line {lineno}): default {ast.unparse(default_node)!r} is not a constant; no default and no range")
        else:
            self.problems.append(f"{name} (line {lineno}): read without a default (required)")
        if name in self.params:
            old = self.params[name]
            if old.type is not str and type_ is str:
                return old.default
        if not HPARAM_NAME.fullmatch(name):
            self.problems.append(f"{name!r} (line {lineno}): not an env-var style name [A-Z][A-Z0-9_]{{0,63}}; left out")
            return default
        low, high = default_range(type_, default)
        self.params[name] = ScriptHparam(name, type_, default, low, high, lineno)
        return default

    def _const(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in self.known and self.known[node.id] is not None:
                return self.known[node.id]
            raise _Unreadable
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            if node.attr in self.known and self.known[node.attr] is not None:
                return self.known[node.attr]
            raise _Unreadable
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = self._const(node.operand)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            a, b = self._const(node.left), self._const(node.right)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
                if isinstance(node.op, ast.Pow) and abs(b) > 64:
                    raise _Unreadable
                try:
                    return _BINOPS[type(node.op)](a, b)
                except (ArithmeticError, ValueError):
                    raise _Unreadable from None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CASTS and len(node.args) == 1:
            return _apply_casts(self._const(node.args[0]), [node.func.id])
        got = self._env_read(node)
        if got is not None:
            return got
        raise _Unreadable


def _apply_casts(value: Any, casts_inner_first: list[str]) -> Any:
    """Apply casts as the script would to the env string (or default): innermost first."""
    for cast in casts_inner_first:
        try:
            if cast == "int":
                value = int(value) if not isinstance(value, str) else int(value.strip())
            elif cast == "float":
                value = float(value)
            elif cast == "bool":
                value = bool(value)
            else:
                value = str(value)
        except (TypeError, ValueError):
            raise _Unreadable from None
    if isinstance(value, float) and not math.isfinite(value):
        raise _Unreadable
    return value


def _env_get(node: ast.AST) -> tuple[str, ast.AST | None, int] | None:
    """(name, default node or None, line) if `node` is os.environ.get / os.getenv / environ.get / os.environ[...]."""
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
        func = node.func
        is_get = isinstance(func, ast.Attribute) and func.attr == "get" and _is_environ(func.value)
        is_getenv = (isinstance(func, ast.Attribute) and func.attr == "getenv" and isinstance(func.value, ast.Name) and func.value.id == "os") or (
            isinstance(func, ast.Name) and func.id == "getenv"
        )
        if is_get or is_getenv:
            default = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "default"), None)
            return node.args[0].value, default, node.lineno
    if isinstance(node, ast.Subscript) and _is_environ(node.value) and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
        return node.slice.value, None, node.lineno
    return None


def _is_environ(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ" and isinstance(node.value, ast.Name) and node.value.id == "os") or (
        isinstance(node, ast.Name) and node.id == "environ"
    )


def _child_blocks(stmt: ast.stmt) -> list[list[ast.stmt]]:
    blocks = []
    for attr in ("body", "orelse", "finalbody"):
        value = getattr(stmt, attr, None)
        if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
            blocks.append(value)
    for handler in getattr(stmt, "handlers", []) or []:
        blocks.append(handler.body)
    return blocks


def _shallow_exprs(stmt: ast.stmt) -> list[ast.AST]:
    """The expressions of a statement that are not inside its nested statement blocks."""
    out = []
    for name, value in ast.iter_fields(stmt):
        if name in ("body", "orelse", "finalbody", "handlers"):
            continue
        if isinstance(value, ast.AST):
            out.append(value)
        elif isinstance(value, list):
            out.extend(v for v in value if isinstance(v, ast.AST) and not isinstance(v, ast.stmt))
    return out
