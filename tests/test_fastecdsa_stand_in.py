"""The fastecdsa stand-in (shims/fastecdsa) that p2pgolf installs instead of the upstream C
package: libp2p imports with it, our Noise + Ed25519 hosts connect with it, every P-256
operation raises NotImplementedError naming why, and int_bytelen matches upstream. Run in a
subprocess with the stand-in first on the path (the venv may hold the upstream package)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAND_IN = REPO / "shims" / "fastecdsa"

SCRIPT = textwrap.dedent(
    """
    import fastecdsa, trio
    assert fastecdsa.STAND_IN, fastecdsa.__file__

    from fastecdsa.encoding.util import int_bytelen

    def upstream_int_bytelen(x):  # fastecdsa 2.3.2's definition
        n = 0
        while x:
            n += 1
            x >>= 8
        return n

    assert all(int_bytelen(x) == upstream_int_bytelen(x) for x in [0, 1, 255, 256, 2**255, 2**256 - 1, 2**256])

    import libp2p.security.secio.transport  # imports every fastecdsa name libp2p uses
    from libp2p.crypto.ecc import ECCPublicKey, create_new_key_pair
    for call in (lambda: create_new_key_pair("P-256"), lambda: ECCPublicKey.from_bytes(b"\\x04" + b"\\x01" * 64, "P-256")):
        try:
            call()
        except NotImplementedError as exc:
            assert "Ed25519 keys and Noise only" in str(exc), exc
        else:
            raise AssertionError("a P-256 operation did not raise")

    from p2pgolf.node.host import make_host, parse_peer_addr, peer_info
    from p2pgolf.protocol.identity import Identity
    import multiaddr

    async def main():
        a, b = make_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"]), make_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"])
        async with a.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]), b.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            addr = f"{a.get_addrs()[0]}"
            addr = addr if "/p2p/" in addr else f"{addr}/p2p/{a.get_id().to_base58()}"
            with trio.fail_after(20):
                await b.connect(peer_info(parse_peer_addr(addr)))
            assert a.get_id() in b.get_connected_peers()
            await b.close()
            await a.close()

    trio.run(main)
    print("ok")
    """
)


def test_libp2p_imports_and_noise_ed25519_hosts_connect_with_the_stand_in_and_p256_is_refused():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(STAND_IN), str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_the_stand_in_satisfies_libp2ps_pin_and_says_what_it_is():
    text = (STAND_IN / "pyproject.toml").read_text()
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    version = next(line.split('"')[1] for line in text.splitlines() if line.startswith("version"))
    assert Version(version) in SpecifierSet("==2.3.2") and Version(version).local == "p2pgolf.standin"
    setup = (REPO / "setup.py").read_text()
    assert 'f"fastecdsa @ {STAND_IN.as_uri()}' in setup and '"libp2p==0.8.1"' in setup
