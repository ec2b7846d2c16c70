"""p2pgolf's stand-in for fastecdsa 2.3.2: the names libp2p 0.8.1 imports, no C extension.

P-256 arithmetic is not provided: every call that would need it raises NotImplementedError
(see `unsupported`). p2pgolf uses Ed25519 keys and Noise only, never P-256 keys or secio.
"""

STAND_IN = True  # lets a check tell this package from the upstream one


def unsupported(what: str) -> NotImplementedError:
    """The error every P-256 operation raises, naming the operation."""
    return NotImplementedError(
        f"{what}: P-256 (ECDSA) keys and the secio handshake are not supported here; "
        "p2pgolf installs a fastecdsa stand-in because it uses Ed25519 keys and Noise only"
    )
