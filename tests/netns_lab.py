"""A small NAT lab in Linux network namespaces, for the NAT test and benchmark (needs root, `ip`
and `iptables`).

    wan:  a bridge; on it `pub` (198.51.100.10), and the outer side of two routers
    nat1: router 198.51.100.1 -> lan 10.1.0.0/24, where `a` (10.1.0.2) lives, masqueraded
    nat2: router 198.51.100.2 -> lan 10.2.0.0/24, where `b` (10.2.0.2) lives, masqueraded

Both routers are Linux MASQUERADE (endpoint-independent mapping while the source port is free,
so the port is kept; endpoint-dependent filtering). With `drop_unsolicited` (the default) they
also drop unsolicited packets from the wan side, as a home router's firewall does; without it
they answer an unsolicited SYN with a reset. With `random_ports` every mapping gets a random
port (MASQUERADE --random-fully: a symmetric NAT, as some carrier-grade NATs are).

Namespace names carry a prefix with this process's pid, so two runs never collide. Veth pairs
are created directly inside the namespaces (the root namespace never holds them), so deleting
the namespaces removes every veth, bridge, route and iptables rule of the lab. `NatLab.close`
deletes exactly the namespaces this lab made, also when setup failed half-way.
"""

from __future__ import annotations

import os
import shutil
import subprocess

PUBLIC_IP = "198.51.100.10"  # TEST-NET-2: never routed on the internet
ROUTER_WAN = {"nat1": "198.51.100.1", "nat2": "198.51.100.2"}
HOST_LAN = {"a": ("nat1", "10.1.0.2", "10.1.0.1"), "b": ("nat2", "10.2.0.2", "10.2.0.1")}


def missing_requirements() -> str | None:
    """Why the lab cannot run here (not root, no ip, no iptables), or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"needs the {tool!r} command (apt-get install -y iproute2 iptables)"
    return None


class NatLab:
    """The namespaces above; `exec_args(name)` prefixes a command to run inside one."""

    def __init__(self, prefix: str | None = None, *, drop_unsolicited: bool = True, random_ports: bool = False) -> None:
        self.prefix = prefix or f"p2gn{os.getpid()}"
        self.drop_unsolicited = drop_unsolicited
        self.random_ports = random_ports
        self.made: list[str] = []

    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def exec_args(self, name: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(name)]

    def __enter__(self) -> "NatLab":
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        for name in ("wan", "pub", "nat1", "nat2", "a", "b"):
            _ip("netns", "add", self.ns(name))
            self.made.append(self.ns(name))
            _ip("-n", self.ns(name), "link", "set", "lo", "up")
        wan = self.ns("wan")
        _ip("-n", wan, "link", "add", "br0", "type", "bridge")
        _ip("-n", wan, "link", "set", "br0", "up")
        self._wire("pub", "eth0", PUBLIC_IP, bridge_port="pub")
        for router, wan_ip in ROUTER_WAN.items():
            self._wire(router, "wan0", wan_ip, bridge_port=router)
        for host, (router, ip, gateway) in HOST_LAN.items():
            r, h = self.ns(router), self.ns(host)
            _ip("-n", r, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", h)
            _ip("-n", r, "addr", "add", f"{gateway}/24", "dev", "lan0")
            _ip("-n", r, "link", "set", "lan0", "up")
            _ip("-n", h, "addr", "add", f"{ip}/24", "dev", "eth0")
            _ip("-n", h, "link", "set", "eth0", "up")
            _ip("-n", h, "route", "add", "default", "via", gateway)
            _run(["ip", "netns", "exec", r, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
            _run(["ip", "netns", "exec", r, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan0", "-j", "MASQUERADE", *(["--random-fully"] if self.random_ports else [])])
            if self.drop_unsolicited:
                # What a home router's firewall does: an unsolicited packet from outside is dropped
                # silently. Without it, the router's own kernel answers a SYN to an unmapped port
                # with a reset, which kills a TCP hole punch whose other SYN is a moment late.
                _run(["ip", "netns", "exec", r, "iptables", "-A", "INPUT", "-i", "wan0", "-j", "DROP"])

    def _wire(self, name: str, dev: str, ip: str, *, bridge_port: str) -> None:
        wan, ns = self.ns("wan"), self.ns(name)
        _ip("-n", wan, "link", "add", bridge_port, "type", "veth", "peer", "name", dev, "netns", ns)
        _ip("-n", wan, "link", "set", bridge_port, "master", "br0")
        _ip("-n", wan, "link", "set", bridge_port, "up")
        _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
        _ip("-n", ns, "link", "set", dev, "up")

    def close(self) -> None:
        """Delete the namespaces this lab made (their veths, bridge and iptables rules go with them)."""
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.made.clear()

    def leftovers(self) -> list[str]:
        """Namespaces with this lab's prefix that still exist (empty after `close`)."""
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return [line.split()[0] for line in out.splitlines() if line.startswith(self.prefix + "-")]


def _ip(*args: str) -> None:
    _run(["ip", *args])


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
