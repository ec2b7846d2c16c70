"""Key functions libp2p calls for P-256 keys; each raises."""

from fastecdsa import unsupported


class PEMEncoder:
    pass


def gen_private_key(curve, *args, **kwargs) -> int:
    raise unsupported("fastecdsa.keys.gen_private_key")


def get_public_key(d: int, curve):
    raise unsupported("fastecdsa.keys.get_public_key")


def export_key(key, curve=None, filepath=None, encoder=None):
    raise unsupported("fastecdsa.keys.export_key")
