"""SEC1 public-key encoding of P-256 points: not provided (raises)."""

from fastecdsa import unsupported


class SEC1Encoder:
    @staticmethod
    def encode_public_key(point, compressed: bool = True) -> bytes:
        raise unsupported("SEC1Encoder.encode_public_key")

    @staticmethod
    def decode_public_key(key: bytes, curve):
        raise unsupported("SEC1Encoder.decode_public_key")
