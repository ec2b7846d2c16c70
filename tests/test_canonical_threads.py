"""canonical.decode's fast path re-packs with one msgpack Packer per thread (a Packer is not
thread-safe): decoding from several threads at once accepts exactly what one thread accepts."""

from __future__ import annotations

import concurrent.futures

from records_factory import signed_result

from p2pgolf.protocol import canonical
from p2pgolf.protocol.identity import Identity
from p2pgolf.protocol.signing import _split_envelope


def test_decoding_in_many_threads_gives_the_values_and_refusals_of_one_thread():
    who = Identity.generate()
    bodies = [_split_envelope(signed_result(who, seed=i).raw)[0] for i in range(40)]
    unsorted = b"\x82\xa1b\x01\xa1a\x02"  # keys out of order: not canonical
    inputs = bodies * 5 + [unsorted] * 20

    def one(data: bytes):
        try:
            return canonical.decode(data, max_len=1 << 16)
        except canonical.ProtocolError as exc:
            return f"refused: {exc}"

    alone = [one(d) for d in inputs]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(one, inputs))
    assert together == alone
    assert alone[-1].startswith("refused") and isinstance(alone[0], dict)
