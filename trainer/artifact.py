"""The model artifact: quantise, serialise and compress named numpy arrays, and load them back.

Backend-free (numpy only), so a torch model and an MLX model produce and read the same files.

Layout of an artifact file (all integers little-endian):

    b"P2PGOLF-ARTIFACT\\n"  1 byte compressor id (b"z" zlib level 9, b"x" lzma preset 9,
                           b"s" zstd level 22, b"b" brotli quality 11; trainer/compression.py)
    compressed payload:
        u32 header length, header (UTF-8 JSON, sorted keys), then the tensor bytes back to back.
    header = {"format": "p2pgolf-artifact/1" or "/2", "config": {every knob}, "tensors": [
        {"name", "shape", "encoding": "int" | "f16" | "f32", "offset", "nbytes",
         "bits", "scale_offset", "scale_nbytes"   (the last three only for "int"),
         "container": "bytes", "shuffle": true    (format 2 only, each only when used)} ...]}

Encodings, chosen by name and shape (`encoding_for`) and the layout (trainer/precision.py):
- "int": 2-D weight matrices. Each row is clipped (trainer/row_quantiser.py: a high quantile of
  its magnitudes by default) and stored as signed integers in [-(2^(bits-1)-1), 2^(bits-1)-1] with one fp16 scale per row;
  the integers are offset to unsigned and either bit-packed (`bits` bits each, row-major) or,
  with "container": "bytes", stored one per byte. The layout may give the embedding and the MLP
  matrices their own bits, or keep them (and matrices up to `fp16_max_numel` elements) in fp16.
- "f32": control tensors (gains and mixes, see CONTROL_SUFFIXES): tiny, and precision-sensitive.
- "f16": every other tensor (vectors, scalars).
- "shuffle": true: the array's bytes are stored as byte planes (every value's first byte, then
  every value's second byte, ...), for fp16/f32 values and for the fp16 row scales.

Format 1 is written whenever the layout uses neither containers nor shuffling, so such files
are byte for byte what earlier versions wrote; both formats are read.

What it guarantees: export is deterministic (same arrays, same bytes); `load_artifact` returns
float32 arrays of the original shapes, and raises ArtifactError naming what is wrong for a file
that is not a well-formed artifact. `artifact_bytes` counts what the challenge counts: the
compressed file plus the bytes of the code that produced it, packed as a submission packs it
(`code_bytes`).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p2pgolf.trainer.compression import COMPRESSORS, CompressionError, compress, compressor_for_id, decompress
from p2pgolf.trainer.precision import Layout
from p2pgolf.trainer.row_quantiser import gptq_codes, quantise_codes

__all__ = [
    "ArtifactError",
    "LoadedArtifact",
    "CONTROL_SUFFIXES",
    "export_artifact",
    "export_options",
    "load_artifact",
    "encoding_for",
    "quantise_rows",
    "dequantise_rows",
    "code_files",
    "code_bytes",
    "FORMAT",
]

FORMAT = "p2pgolf-artifact/1"
FORMAT_2 = "p2pgolf-artifact/2"  # byte containers or shuffled bytes in the tensor table
MAGIC = b"P2PGOLF-ARTIFACT\n"
# Decompressed payloads are refused past this (a peer's few bytes of zeros can claim gigabytes).
MAX_PAYLOAD_BYTES = 1 << 30
CONTROL_SUFFIXES = ("resid_mix", "attn_scale", "mlp_scale", "q_gain", "skip_weights", "skip_gates", "smear_gate", "ve_scale", "parallel_post", "parallel_resid")
MAX_HEADER_BYTES = 16 << 20

class ArtifactError(ValueError):
    """An artifact file that cannot be read, or arrays that cannot be exported."""


@dataclass(frozen=True)
class LoadedArtifact:
    """What an artifact holds: float32 arrays by name and the knob config of the model."""

    state: dict[str, np.ndarray]
    config: dict[str, Any]
    compressor: str


def encoding_for(name: str, shape: tuple[int, ...]) -> str:
    """How the tensor called `name` is stored: "int", "f16" or "f32"."""
    if name.rsplit(".", 1)[-1] in CONTROL_SUFFIXES:
        return "f32"
    return "int" if len(shape) == 2 and shape[0] > 0 and shape[1] > 0 else "f16"


def export_options(knobs: Mapping[str, Any]) -> dict[str, Any]:
    """`export_artifact`'s keyword arguments for a knob config (quant_bits, compressor, layout)."""
    return {"quant_bits": knobs["quant_bits"], "compressor": knobs["compressor"], "layout": Layout.from_knobs(knobs)}


def export_artifact(
    state: Mapping[str, np.ndarray],
    config: Mapping[str, Any],
    *,
    quant_bits: int = 8,
    compressor: str = "zlib",
    layout: Layout | None = None,
    hessians: Mapping[str, np.ndarray] | None = None,
) -> bytes:
    """The artifact bytes for the named arrays of a model built from the knob `config`. With
    `layout.gptq`, matrices named in `hessians` (input Gram matrices from trainer/calibration.py)
    are rounded by GPTQ; the file format is the same."""
    layout = layout or Layout()
    if not 2 <= quant_bits <= 8:
        raise ArtifactError(f"quant_bits={quant_bits} is outside [2, 8]")
    if compressor not in COMPRESSORS:
        raise ArtifactError(f"compressor {compressor!r} is not one of {', '.join(COMPRESSORS)}")
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    offset = 0

    def add(data: bytes) -> tuple[int, int]:
        nonlocal offset
        chunks.append(data)
        start, offset = offset, offset + len(data)
        return start, len(data)

    for name in sorted(state):
        array = np.asarray(state[name])
        if not np.issubdtype(array.dtype, np.floating):
            raise ArtifactError(f"tensor {name} has dtype {array.dtype}; only floating arrays are exported")
        if not np.all(np.isfinite(array)):
            raise ArtifactError(f"tensor {name} holds NaN or infinite values")
        encoding = encoding_for(name, array.shape)
        bits = layout.matrix_bits(name, array.shape, quant_bits) if encoding == "int" else None
        if encoding == "int" and bits is None:
            encoding = "f16"
        entry: dict[str, Any] = {"name": name, "shape": list(array.shape), "encoding": encoding}
        if layout.byte_shuffle:
            entry["shuffle"] = True
        if encoding == "int":
            if layout.gptq and hessians and name in hessians:
                codes, scales = gptq_codes(array, bits, hessians[name], rule=layout.scale_rule, clip=layout.clip, clip_sigmas=layout.clip_sigmas)
            else:
                codes, scales = quantise_codes(array, bits, rule=layout.scale_rule, clip=layout.clip, clip_sigmas=layout.clip_sigmas)
            if layout.container == "bytes":
                entry["container"] = "bytes"
            else:
                codes = _pack(codes, bits)
            entry["offset"], entry["nbytes"] = add(codes.tobytes())
            entry["scale_offset"], entry["scale_nbytes"] = add(_to_bytes(scales.astype("<f2"), layout.byte_shuffle))
            entry["bits"] = bits
        else:
            dtype = "<f4" if encoding == "f32" else "<f2"
            entry["offset"], entry["nbytes"] = add(_to_bytes(np.ascontiguousarray(array, dtype=dtype), layout.byte_shuffle))
        entries.append(entry)
    header = json.dumps(
        {"format": FORMAT if layout.is_legacy else FORMAT_2, "config": dict(config), "tensors": entries}, sort_keys=True, separators=(",", ":")
    ).encode()
    payload = struct.pack("<I", len(header)) + header + b"".join(chunks)
    return MAGIC + COMPRESSORS[compressor] + compress(payload, compressor)


def load_artifact(blob: bytes) -> LoadedArtifact:
    """Decompress and dequantise an artifact; ArtifactError for anything malformed."""
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 1:
        raise ArtifactError("not a p2pgolf artifact (bad magic bytes)")
    tag = blob[len(MAGIC) : len(MAGIC) + 1]
    body = blob[len(MAGIC) + 1 :]
    try:
        compressor = compressor_for_id(tag)
        payload = decompress(body, compressor, MAX_PAYLOAD_BYTES)
    except CompressionError as exc:
        raise ArtifactError(f"corrupt compressed payload: {exc}") from None
    if len(payload) < 4:
        raise ArtifactError("truncated artifact header")
    (header_len,) = struct.unpack_from("<I", payload)
    if header_len > MAX_HEADER_BYTES or 4 + header_len > len(payload):
        raise ArtifactError(f"artifact header length {header_len} does not fit the payload")
    try:
        header = json.loads(payload[4 : 4 + header_len])
    except ValueError as exc:
        raise ArtifactError(f"artifact header is not JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("format") not in (FORMAT, FORMAT_2):
        raise ArtifactError(f"unsupported artifact format {header.get('format') if isinstance(header, dict) else None!r}")
    data = memoryview(payload)[4 + header_len :]
    state: dict[str, np.ndarray] = {}
    try:
        for entry in header["tensors"]:
            if header["format"] == FORMAT and ("container" in entry or "shuffle" in entry):
                raise ValueError(f"tensor {entry['name']} uses format-2 fields in a format-1 file")
            state[entry["name"]] = _decode(entry, data)
        config = dict(header["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"malformed artifact tensor table: {exc}") from None
    return LoadedArtifact(state=state, config=config, compressor=compressor)


def quantise_rows(matrix: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric quantisation: (bit-packed uint8 codes, float16 scale per row)."""
    codes, scales = quantise_codes(matrix, bits)
    return _pack(codes, bits), scales


def dequantise_rows(packed: np.ndarray, scales: np.ndarray, shape: tuple[int, int], bits: int, *, container: str = "packed") -> np.ndarray:
    """Inverse of `quantise_rows` (or of `quantise_codes` with container="bytes"), up to the rounding."""
    qmax = 2 ** (bits - 1) - 1
    count = shape[0] * shape[1]
    raw = packed[:count] if container == "bytes" else _unpack(packed, bits, count)
    if container == "bytes" and int(raw.max(initial=0)) > 2 * qmax:
        raise ValueError(f"a code is above {2 * qmax}, the largest {bits}-bit code")
    codes = raw.astype(np.int16) - qmax
    return codes.reshape(shape).astype(np.float32) * scales.astype(np.float32)[:, None]


def code_files(backend: str) -> list[Path]:
    """The source files whose code is counted for `backend`: its entry module and every
    protocol/ and trainer/ module that imports (trainer.bundle.bundled_modules)."""
    from p2pgolf.trainer.bundle import bundled_modules, module_path

    try:
        names = bundled_modules(backend)
    except ValueError as exc:
        raise ArtifactError(str(exc)) from None
    return [module_path(name) for name in names if name != "p2pgolf"]


def code_bytes(backend: str) -> int:
    """Bytes of the code that produces a model, as the challenge counts its script: the size
    of the train_gpt.py `p2pgolf submission` writes (trainer.bundle: the modules of
    `code_files`, docstrings removed, in one lzma stream, behind a fixed loader), for a default
    candidate (a submission counts its own file exactly)."""
    from p2pgolf.trainer.bundle import bundle_size

    if backend not in ("torch", "mlx"):
        raise ArtifactError(f"unknown backend {backend!r}; expected one of torch, mlx")
    return bundle_size(backend)


def _to_bytes(values: np.ndarray, shuffle: bool) -> bytes:
    """The array's little-endian bytes, as byte planes when `shuffle` (see the module doc)."""
    if not shuffle or values.itemsize == 1:
        return values.tobytes()
    return values.view(np.uint8).reshape(-1, values.itemsize).T.tobytes()


def _from_bytes(raw: np.ndarray, dtype: str, shuffle: bool) -> np.ndarray:
    """Inverse of `_to_bytes` for `raw` (uint8) holding values of `dtype`."""
    size = np.dtype(dtype).itemsize
    if len(raw) % size:
        raise ValueError(f"{len(raw)} bytes do not hold whole {dtype} values")
    if not shuffle or size == 1:
        return raw.view(dtype)
    return np.ascontiguousarray(raw.reshape(size, -1).T).view(dtype).ravel()


def _pack(values: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return values
    # Keep the low `bits` bits of each byte, most significant first, and pack them densely.
    planes = np.unpackbits(values[:, None], axis=1)[:, 8 - bits :]
    return np.packbits(planes.ravel())


def _unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    if bits == 8:
        return packed[:count]
    planes = np.unpackbits(packed)[: count * bits].reshape(count, bits)
    full = np.zeros((count, 8), dtype=np.uint8)
    full[:, 8 - bits :] = planes
    return np.packbits(full, axis=1).ravel()


def _decode(entry: Mapping[str, Any], data: memoryview) -> np.ndarray:
    shape = tuple(int(d) for d in entry["shape"])
    count = int(np.prod(shape, dtype=np.int64))

    def view(offset: int, nbytes: int, dtype: str) -> np.ndarray:
        if offset < 0 or nbytes < 0 or offset + nbytes > len(data):
            raise ValueError(f"tensor {entry['name']} points outside the payload")
        return np.frombuffer(data[offset : offset + nbytes], dtype=dtype)

    encoding = entry["encoding"]
    shuffle = entry.get("shuffle", False) is True
    container = entry.get("container", "packed")
    if container not in ("packed", "bytes"):
        raise ValueError(f"tensor {entry['name']} has unknown container {container!r}")
    if encoding in ("f16", "f32"):
        values = _from_bytes(view(entry["offset"], entry["nbytes"], "u1"), "<f2" if encoding == "f16" else "<f4", shuffle)
        if values.size != count:
            raise ValueError(f"tensor {entry['name']} has {values.size} values for shape {shape}")
        return values.astype(np.float32).reshape(shape)
    if encoding != "int" or len(shape) != 2:
        raise ValueError(f"tensor {entry['name']} has unknown encoding {encoding!r} for shape {shape}")
    bits = int(entry["bits"])
    if not 2 <= bits <= 8:
        raise ValueError(f"tensor {entry['name']} has {bits} bits")
    packed = view(entry["offset"], entry["nbytes"], "u1")
    if packed.size * (8 if container == "packed" else bits) < count * bits:
        raise ValueError(f"tensor {entry['name']} is truncated")
    scales = _from_bytes(view(entry["scale_offset"], entry["scale_nbytes"], "u1"), "<f2", shuffle)
    if scales.size != shape[0]:
        raise ValueError(f"tensor {entry['name']} has {scales.size} scales for {shape[0]} rows")
    return dequantise_rows(packed, scales, shape, bits, container=container)
