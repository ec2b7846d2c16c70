"""`pool import` of hostile JSON lines: every line is bounded before it is read into memory,
and nothing but a named error comes out (a reject with its line number, or ProtocolError from
`decode_json_line`). On main a 40 KB line of nested `[` raised RecursionError out of the
import, and a long line was read whole before its size was checked."""

from __future__ import annotations

import json
import tracemalloc

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recordgen as g
from p2pgolf.node.cli import cli
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.transfer import MAX_LINE_BYTES, decode_json_line, export_records, import_records
from p2pgolf.protocol.errors import ProtocolError

WHO = g.identity(7)
GOOD = g.batch(2, who=WHO)


def good_lines(tmp_path) -> list[bytes]:
    with PoolStore(tmp_path / "src.sqlite") as src:
        src.add_many([r.raw for r in GOOD])
        export_records(src, tmp_path / "good.jsonl")
    return (tmp_path / "good.jsonl").read_bytes().splitlines(keepends=True)


def test_deeply_nested_line_is_one_reject_with_its_number_and_the_rest_is_imported(tmp_path):
    good = good_lines(tmp_path)
    path = tmp_path / "nested.jsonl"
    path.write_bytes(good[0] + b"[" * 40_000 + b"\n" + b'{"record": ' * 5_000 + b"\n" + good[1])
    with PoolStore(tmp_path / "pool.sqlite") as store:
        report = import_records(store, path)
    assert sorted(report.added) == sorted(r.id for r in GOOD)
    assert [n for n, _ in report.rejected] == [2, 3]
    assert all("nest" in reason for _, reason in report.rejected), report.rejected


def test_the_cli_reports_a_nested_line_in_one_line_and_keeps_the_good_records(tmp_path):
    good = good_lines(tmp_path)
    path = tmp_path / "nested.jsonl"
    path.write_bytes(b"[" * 40_000 + b"\n" + good[0])
    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "h"), "pool", "import", str(path)])
    assert result.exit_code == 1 and not isinstance(result.exception, RecursionError)
    assert "line 1:" in result.output and "imported 1 new" in result.output


def test_a_huge_line_is_rejected_by_its_size_without_being_held_in_memory(tmp_path):
    good = good_lines(tmp_path)
    size = 8 * 1024 * 1024
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(good[0])
        f.write(b'{"id": "' + b"a" * size + b'"}\n')
        f.write(good[1])
    with PoolStore(tmp_path / "pool.sqlite") as store:
        tracemalloc.start()
        try:
            report = import_records(store, path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert len(report.added) == 2 and [n for n, _ in report.rejected] == [2]
    assert str(MAX_LINE_BYTES) in report.rejected[0][1]
    assert peak < size / 4, f"peak {peak} bytes while reading an {size}-byte line"


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _valid_line() -> str:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        return good_lines(Path(d))[0].decode()


VALID_LINE = _valid_line()
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
    max_leaves=10,
)


def lines():
    mutated = st.tuples(st.integers(0, len(VALID_LINE)), st.integers(0, len(VALID_LINE)), st.text(max_size=30)).map(
        lambda t: VALID_LINE[: t[0]] + t[2] + VALID_LINE[t[1]:]
    )
    record_like = st.dictionaries(st.sampled_from(["id", "sig", "record"]), json_values, max_size=3).map(lambda d: json.dumps(d, allow_nan=True))
    nested = st.tuples(st.sampled_from(["[", "{\"a\":", "{\"record\":", "[{\"id\":"]), st.integers(1, 3000)).map(lambda t: t[0] * t[1])
    return st.one_of(mutated, record_like, nested, st.text(max_size=200), st.binary(max_size=200))


@FUZZ
@given(lines())
def test_decode_json_line_raises_only_protocol_error(line):
    try:
        decode_json_line(line)
    except ProtocolError:
        pass
