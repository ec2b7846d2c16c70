"""The artifact's compressors, each behind a one-byte id, and bounded decompression.

zlib and lzma are the standard library's; zstd (level 22, the `zstandard` package) and brotli
(quality 11, the `brotli` package) are what the competition's later records use on byte-aligned
codes. Decompression never produces more than `limit` bytes, so a peer's artifact cannot make a
node allocate without bound (a few hundred bytes of zeros can claim gigabytes).
"""

from __future__ import annotations

import lzma
import zlib

__all__ = ["COMPRESSORS", "CompressionError", "compress", "decompress", "compressor_for_id"]

COMPRESSORS = {"zlib": b"z", "lzma": b"x", "zstd": b"s", "brotli": b"b"}
_BY_ID = {tag: name for name, tag in COMPRESSORS.items()}
_CHUNK = 1 << 20


class CompressionError(ValueError):
    """Bytes that do not decompress, or decompress past the limit."""


def compressor_for_id(tag: bytes) -> str:
    """The compressor's name for its id byte; CompressionError for an unknown one."""
    if tag not in _BY_ID:
        raise CompressionError(f"unknown compressor id {tag!r}")
    return _BY_ID[tag]


def compress(data: bytes, name: str) -> bytes:
    """`data` compressed at the strongest setting of `name` (deterministic)."""
    if name == "zlib":
        return zlib.compress(data, 9)
    if name == "lzma":
        return lzma.compress(data, preset=9)
    if name == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=22).compress(data)
    if name == "brotli":
        import brotli

        return brotli.compress(data, quality=11)
    raise CompressionError(f"compressor {name!r} is not one of {', '.join(COMPRESSORS)}")


def decompress(data: bytes, name: str, limit: int) -> bytes:
    """`data` decompressed; CompressionError if it is corrupt or would exceed `limit` bytes."""
    try:
        if name == "zlib":
            return _bounded(zlib.decompressobj(), data, limit, lambda d, n: d.decompress(d.unconsumed_tail or b"", n))
        if name == "lzma":
            return _bounded(lzma.LZMADecompressor(), data, limit, lambda d, n: d.decompress(b"", n))
        if name == "zstd":
            import zstandard

            claimed = zstandard.frame_content_size(data)  # -1: the frame does not say
            if claimed > limit:
                raise CompressionError(f"decompresses to more than {limit} bytes")
            return zstandard.ZstdDecompressor().decompress(data, max_output_size=limit)
        if name == "brotli":
            import brotli

            decoder = brotli.Decompressor()
            out = bytearray()
            for start in range(0, len(data), 4096):  # fed in small steps so the check runs early
                out += decoder.process(data[start : start + 4096])
                if len(out) > limit:
                    raise CompressionError(f"decompresses to more than {limit} bytes")
            if not decoder.is_finished():
                raise CompressionError("truncated brotli stream")
            return bytes(out)
    except CompressionError:
        raise
    except Exception as exc:  # each library raises its own error type for corrupt input
        raise CompressionError(f"corrupt {name} payload: {exc}") from None
    raise CompressionError(f"compressor {name!r} is not one of {', '.join(COMPRESSORS)}")


def _bounded(decoder, data: bytes, limit: int, more) -> bytes:
    """Drive a stdlib decompressor in steps of at most _CHUNK output bytes, up to `limit`."""
    out = bytearray(decoder.decompress(data, min(_CHUNK, limit + 1)))
    while len(out) <= limit and not decoder.eof:
        step = more(decoder, min(_CHUNK, limit + 1 - len(out)))
        if not step:
            break
        out += step
    if len(out) > limit:
        raise CompressionError(f"decompresses to more than {limit} bytes")
    if not decoder.eof:
        raise CompressionError("truncated compressed payload")
    return bytes(out)
