"""Export and import through real files: exact round trips, per-line rejects, nothing lost."""

from __future__ import annotations

import json

import msgpack
import pytest

import recordgen as g
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.transfer import TransferError, detect_format, export_records, import_records


@pytest.fixture
def records():
    who = g.identity(1)
    base = g.batch(8, who=who)
    # Floats whose shortest decimal form has 17 digits, to prove the JSON round trip is exact.
    awkward = g.result(who, i=30, diff={"matrix_lr": 0.1 + 0.2, "rope_base": 12345.678901234567}, val_bpb=1.2345678901234567, note="naïve ✓ “quotes” \\ and 🦙")
    golf = g.result(g.identity(2), i=31, bench=g.GOLF)
    return [*base, awkward, golf, g.attestation(g.identity(2), base[0])]


@pytest.fixture
def full(tmp_path, records):
    with PoolStore(tmp_path / "source.sqlite") as s:
        s.add_many([r.raw for r in records])
        yield s


@pytest.mark.parametrize("name", ["pool.jsonl", "pool.msgpack"])
def test_export_then_import_reproduces_every_envelope_byte_for_byte(tmp_path, full, records, name):
    out = tmp_path / name
    assert export_records(full, out) == len(records)
    with PoolStore(tmp_path / "copy.sqlite") as copy:
        report = import_records(copy, out)
        assert report.rejected == [] and report.duplicates == []
        assert sorted(report.added) == sorted(r.id for r in records)
        assert all(copy.get_raw(r.id) == r.raw for r in records)
        again = import_records(copy, out)
        assert again.added == [] and sorted(again.duplicates) == sorted(r.id for r in records)


def test_json_lines_are_readable_and_keep_floats_exact(tmp_path, full, records):
    out = tmp_path / "pool.jsonl"
    export_records(full, out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    awkward = next(item for item in lines if item["record"]["note"].startswith("naïve"))
    assert awkward["record"]["diff"]["matrix_lr"] == 0.30000000000000004
    assert awkward["record"]["metrics"]["val_bpb"] == 1.2345678901234567
    assert [item["record"]["created_ms"] for item in lines] == sorted(r.created_ms for r in records)
    assert set(lines[0]) == {"id", "sig", "record"} and len(lines[0]["sig"]) == 128


def test_export_of_one_bench_holds_only_its_records(tmp_path, full, records):
    out = tmp_path / "golf.msgpack"
    assert export_records(full, out, bench=g.GOLF) == 1
    items = list(msgpack.Unpacker(open(out, "rb")))
    assert items == [next(r.raw for r in records if r.bench == g.GOLF)]


def test_export_refuses_to_replace_an_existing_file_unless_told(tmp_path, full):
    out = tmp_path / "pool.jsonl"
    out.write_text("precious\n")
    with pytest.raises(TransferError, match="already exists"):
        export_records(full, out)
    assert out.read_text() == "precious\n"
    export_records(full, out, overwrite=True)
    assert out.read_text().startswith('{"id"')
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_bad_json_lines_are_rejected_by_line_number_and_the_good_ones_stored(tmp_path, records):
    good = [_json_item(r) for r in records[:3]]
    tampered_sig = dict(good[1], sig="00" * 64)
    wrong_id = dict(good[2], id="ab" * 32)
    changed = json.loads(json.dumps(good[2]))
    changed["record"]["metrics"]["val_bpb"] = 0.5  # a better score than was signed...
    from p2pgolf.protocol import canonical
    from p2pgolf.protocol.signing import record_id

    changed["id"] = record_id(canonical.encode(changed["record"])).hex()  # ...with a matching id
    lines = [
        json.dumps(good[0]),                       # 1 ok
        "{not json",                               # 2
        json.dumps(tampered_sig),                  # 3
        "",                                        # 4 blank: skipped, not a reject
        json.dumps(wrong_id),                      # 5
        json.dumps(changed),                       # 6
        '{"id": "a", "id": "b", "sig": "", "record": {}}',  # 7 duplicate key
        json.dumps({**good[0], "extra": 1}),       # 8
        json.dumps(dict(good[1], record={**good[1]["record"], "diff": {"num_layers": 1000}})),  # 9
        json.dumps(good[2]),                       # 10 ok
        '{"id": "x", "sig": "00", "record": {"v": NaN}}',  # 11
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with PoolStore(tmp_path / "pool.sqlite") as store:
        report = import_records(store, path)
        assert report.added == [records[0].id, records[2].id]
        reasons = dict(report.rejected)
        assert sorted(reasons) == [2, 3, 5, 6, 7, 8, 9, 11]
        assert "not valid JSON" in reasons[2]
        assert "signature does not verify" in reasons[3]
        assert reasons[5].startswith("id: does not match")
        assert "signature does not verify" in reasons[6]
        assert "twice" in reasons[7]
        assert "exactly the fields" in reasons[8]
        assert "num_layers" in reasons[9]
        assert "NaN" in reasons[11]
        assert store.count() == 2


def test_a_truncated_msgpack_file_keeps_the_items_before_the_cut(tmp_path, records):
    stream = b"".join(msgpack.packb(r.raw) for r in records[:4])
    path = tmp_path / "cut.msgpack"
    path.write_bytes(stream[:-10])
    with PoolStore(tmp_path / "pool.sqlite") as store:
        report = import_records(store, path)
        assert report.added == [r.id for r in records[:3]]
        assert len(report.rejected) == 1 and report.rejected[0][0] == 4
        assert "ends in the middle" in report.rejected[0][1]


def test_msgpack_items_that_are_not_envelopes_are_rejected_by_item_number(tmp_path, records):
    items = [msgpack.packb(records[0].raw), msgpack.packb("text"), msgpack.packb(b"\x93\x01\x02\x03"), msgpack.packb(records[1].raw)]
    path = tmp_path / "odd.mpk"
    path.write_bytes(b"".join(items) + b"\xc1")  # and a byte that is never valid msgpack
    with PoolStore(tmp_path / "pool.sqlite") as store:
        report = import_records(store, path)
        assert report.added == [records[0].id, records[1].id]
        assert [n for n, _ in report.rejected] == [2, 3, 5]
        assert "must be a msgpack bin" in report.rejected[0][1]
        assert "malformed" in report.rejected[2][1]


def test_a_hostile_file_never_removes_or_changes_stored_records(tmp_path, full, records):
    before = {r.id: full.get_raw(r.id) for r in records}
    junk = tmp_path / "junk.msgpack"
    junk.write_bytes(bytes(range(256)) * 64)
    report = import_records(full, junk)
    assert report.added == [] and report.rejected
    forged = tmp_path / "forged.jsonl"
    forged.write_text("\n".join(json.dumps(dict(_json_item(r), sig="11" * 64)) for r in records))
    report = import_records(full, forged)
    assert report.added == [] and len(report.duplicates) == 0 and len(report.rejected) == len(records)
    assert {r.id: full.get_raw(r.id) for r in records} == before
    assert full.count() == len(records)


def test_format_comes_from_the_flag_the_extension_or_the_first_byte(tmp_path, full):
    jsonl, mp = tmp_path / "a.jsonl", tmp_path / "a.msgpack"
    export_records(full, jsonl)
    export_records(full, mp)
    unnamed_json, unnamed_mp = tmp_path / "dump.txt", tmp_path / "dump.bin"
    unnamed_json.write_bytes(jsonl.read_bytes())
    unnamed_mp.write_bytes(mp.read_bytes())
    assert detect_format(unnamed_json) == "jsonl" and detect_format(unnamed_mp) == "msgpack"
    assert detect_format(unnamed_mp, "jsonl") == "jsonl"
    odd = tmp_path / "notes.txt"
    odd.write_text("hello")
    with pytest.raises(TransferError, match="cannot tell the format"):
        detect_format(odd)
    with pytest.raises(TransferError, match="unknown format 'csv'"):
        detect_format(jsonl, "csv")
    with pytest.raises(TransferError, match="no such file"):
        import_records(full, tmp_path / "absent.jsonl")


def _json_item(rec) -> dict:
    body = msgpack.unpackb(rec.body, raw=False)
    return {"id": rec.id, "sig": rec.signature.hex(), "record": body}
