"""Does the README's install work on a machine without a C compiler or the GMP headers?

In one run, in environments stripped of compilers (PATH holds only a python3 link; CC, CXX and
the C include paths point at nothing, so any C build fails at once):
- baseline: `pip install fastecdsa==2.3.2` in a fresh venv, the upstream package libp2p 0.8.1
  pins (PyPI has only its source for Linux): expected to fail;
- subject: `pip install "<clone>[EXTRAS]"` in another fresh venv, as README.md says, then what
  a user does next: `pip check`, `p2pgolf --version`, and two real `p2pgolf join --no-train`
  nodes on 127.0.0.1 that connect (Noise with Ed25519 peer ids: what libp2p needs from its deps);
- wheels elsewhere: for each target platform (macOS arm64/x86_64, Linux x86_64/aarch64) and
  Python version, pip resolves the whole dependency set with binary wheels only (metadata only,
  nothing installed); the pure-Python sdists (no C) are built here once and offered as wheels.
  pip evaluates environment markers on this machine, so torch is resolved only for Linux
  x86_64 (its CUDA dependencies are marked per platform); mlx is resolved for macOS arm64.
Prints a table (machine, settings, each step's outcome and time); `--json` prints one object.

    .venv/bin/python benchmarks/install_check.py [--extras torch] [--skip-platforms] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAC_ARM = ("macosx_14_0_arm64", "macosx_13_0_arm64", "macosx_12_0_arm64", "macosx_11_0_arm64")
MAC_INTEL = ("macosx_13_0_x86_64", "macosx_12_0_x86_64", "macosx_11_0_x86_64", "macosx_10_15_x86_64", "macosx_10_9_x86_64")
LINUX_X86 = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
LINUX_ARM = ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
TORCH, MLX = "torch>=2.4,<2.14", "mlx>=0.20"  # the README's extras: .[torch], on a Mac .[mlx]
PLATFORMS = [
    # (label, pip --platform tags, python version, the extra's requirement, expected to resolve with wheels only)
    ("macOS arm64 .[mlx]", MAC_ARM, "3.11", MLX, True),
    ("macOS arm64 .[mlx]", MAC_ARM, "3.12", MLX, True),
    ("macOS arm64 .[mlx]", MAC_ARM, "3.13", MLX, True),
    # zeroconf (libp2p's mDNS) has no macOS x86_64 wheel; its source falls back to pure
    # Python without a compiler (the zeroconf step shows it), so this one is expected to fail.
    ("macOS x86_64 (no extra)", MAC_INTEL, "3.12", None, False),
    ("Linux x86_64 .[torch]", LINUX_X86, "3.11", TORCH, True),
    ("Linux x86_64 .[torch]", LINUX_X86, "3.13", TORCH, True),
    # pip judges environment markers by the machine it runs on, not by --platform, so torch
    # (whose CUDA dependencies carry platform markers) is resolved only for this machine's kind.
    ("Linux aarch64 (no extra)", LINUX_ARM, "3.12", None, True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--extras", default="", help="extras to install, e.g. torch (README: .[torch])")
    parser.add_argument("--skip-platforms", action="store_true", help="skip the wheels-elsewhere resolution")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="p2pgolf-install-"))
    try:
        env = stripped_env(work)
        result = {
            "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
            "settings": {"extras": args.extras, "compiler_on_path": shutil.which("cc", path=env["PATH"]) or shutil.which("gcc", path=env["PATH"]),
                         "CC": env["CC"], "PATH": env["PATH"]},
            "steps": [],
        }
        steps = result["steps"]
        base_venv = make_venv(work / "baseline", env)
        steps.append(step("baseline: pip install fastecdsa==2.3.2 (upstream pin)", [str(base_venv / "bin" / "pip"), "install", "--no-cache-dir", "fastecdsa==2.3.2"], env, expect_ok=False))
        venv = make_venv(work / "subject", env)
        target = str(REPO) + (f"[{args.extras}]" if args.extras else "")
        install = step(f'pip install "{target}"', [str(venv / "bin" / "pip"), "install", "--no-cache-dir", target], env)
        install["built"] = re.findall(r"Created wheel for ([^:]+): filename=(\S+)", install.pop("output"))
        install["c_extensions_built"] = [name for name, wheel in install["built"] if not wheel.endswith("-none-any.whl")]
        steps.append(install)
        if install["ok"]:
            steps.append(step("pip check", [str(venv / "bin" / "pip"), "check"], env))
            steps.append(step("fastecdsa is the stand-in", [str(venv / "bin" / "python"), "-c", "import fastecdsa, libp2p; assert fastecdsa.STAND_IN"], env))
            steps.append(step("p2pgolf --version", [str(venv / "bin" / "p2pgolf"), "--version"], env))
            steps.append(two_nodes_connect(venv, work, env))
        if not args.skip_platforms:
            wheels = pure_wheels(venv, work, install.get("built", []))
            steps.append(zeroconf_without_compiler(venv, work, env))
            for label, tags, version, extra, expect in PLATFORMS:
                steps.append(resolve_for(label, tags, version, extra, expect, wheels, work, env))
        for s in steps:
            s.pop("output", None)
        result["all_as_expected"] = all(s["ok"] == s["expect_ok"] for s in steps)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    sys.exit(0 if result["all_as_expected"] else 1)


def stripped_env(work: Path) -> dict[str, str]:
    """An environment whose PATH has only python3 (no cc, gcc, make) and whose compiler
    variables point at nothing; pip's own settings (index, proxies) pass through."""
    bin_dir = work / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}")
    keep = {k: v for k, v in os.environ.items() if k.startswith(("PIP_", "HTTP", "http", "NO_PROXY", "no_proxy", "SSL_", "REQUESTS_CA")) or k in ("HOME", "LANG", "TMPDIR")}
    nowhere = str(work / "no-such-dir")
    return {**keep, "PATH": str(bin_dir), "CC": f"{nowhere}/cc", "CXX": f"{nowhere}/c++", "CFLAGS": f"-I{nowhere}", "CPPFLAGS": f"-I{nowhere}",
            "C_INCLUDE_PATH": nowhere, "CPATH": nowhere, "LDFLAGS": f"-L{nowhere}", "PYTHONNOUSERSITE": "1"}


def make_venv(path: Path, env: dict[str, str]) -> Path:
    subprocess.run(["python3", "-m", "venv", str(path)], env=env, check=True, capture_output=True)
    return path


def step(name: str, argv: list[str], env: dict[str, str], *, expect_ok: bool = True, timeout: float = 1800) -> dict:
    start = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    lines = [line.strip() for line in output.splitlines() if line.strip() and "is ignored: it is neither" not in line]
    if proc.returncode == 0:
        detail = next((line for line in lines if line.startswith("Successfully installed")), lines[-1] if lines else "")
        if detail.startswith("Successfully installed"):
            detail = f"installed {len(detail.split()) - 2} packages"
    else:
        # the line that says why: a missing compiler or header, else pip's own error
        detail = next((line for line in lines if any(w in line for w in ("No such file", "unable to execute", "gmp.h", "command '"))), None) \
            or next((line for line in lines if line.startswith("ERROR:")), lines[-1] if lines else "")
    return {"step": name, "ok": proc.returncode == 0, "expect_ok": expect_ok, "seconds": round(time.monotonic() - start, 1),
            "detail": detail[:160], "output": output}


def two_nodes_connect(venv: Path, work: Path, env: dict[str, str]) -> dict:
    """Two `join --no-train` nodes from the fresh venv; the second bootstraps to the first.
    ok when `peers --json` of each shows the other (a Noise handshake with Ed25519 ids)."""
    exe = str(venv / "bin" / "p2pgolf")
    start = time.monotonic()
    homes = [work / "node-a", work / "node-b"]
    ports = [_free_port(), _free_port()]
    procs: list[subprocess.Popen] = []
    detail = ""
    ok = False
    try:
        ids = []
        for home in homes:
            subprocess.run([exe, "--home", str(home), "init"], env=env, check=True, capture_output=True, timeout=60)
            ids.append(json.loads(subprocess.run([exe, "--home", str(home), "id", "--json"], env=env, check=True, capture_output=True, text=True, timeout=60).stdout)["peer_id"])
        first = f"/ip4/127.0.0.1/tcp/{ports[0]}/p2p/{ids[0]}"
        for i, home in enumerate(homes):
            extra = ["--bootstrap", first] if i else []
            procs.append(subprocess.Popen([exe, "--home", str(home), "join", "--no-train", "--bench", "smoke", "--listen", f"/ip4/127.0.0.1/tcp/{ports[i]}", *extra],
                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not ok:
            time.sleep(1)
            seen = []
            for home in homes:
                proc = subprocess.run([exe, "--home", str(home), "peers", "--json"], env=env, capture_output=True, text=True, timeout=30)
                seen.append([p["peer_id"] for p in json.loads(proc.stdout)["peers"]] if proc.returncode == 0 else [])
            ok = seen == [[ids[1]], [ids[0]]]
            detail = f"peers seen: a {len(seen[0])}, b {len(seen[1])}"
    except (subprocess.SubprocessError, OSError, ValueError, KeyError) as exc:
        detail = f"{type(exc).__name__}: {exc}"[:160]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    return {"step": "two join nodes connect over Noise/Ed25519", "ok": ok, "expect_ok": True, "seconds": round(time.monotonic() - start, 1), "detail": detail}


def pure_wheels(venv: Path, work: Path, built: list[tuple[str, str]]) -> Path:
    """Wheels of the source-only dependencies that are pure Python (the stand-in included),
    built here, so another platform's resolution can use them as any pip would build them."""
    out = work / "pure-wheels"
    out.mkdir(exist_ok=True)
    names = [name for name, wheel in built if wheel.endswith("-none-any.whl") and name != "p2pgolf"]
    reqs = [str(REPO / "shims" / "fastecdsa") if n == "fastecdsa" else n for n in names]
    if reqs:
        subprocess.run([str(venv / "bin" / "pip"), "wheel", "--no-deps", "-w", str(out), *reqs], capture_output=True, check=True, timeout=600)
    return out


def zeroconf_without_compiler(venv: Path, work: Path, env: dict[str, str]) -> dict:
    """zeroconf built from its source here without a compiler: ok when the wheel has no C
    extension (what an Intel Mac without Xcode's tools gets)."""
    out = work / "zeroconf"
    version = subprocess.run([str(venv / "bin" / "python"), "-c", "import zeroconf; print(zeroconf.__version__)"], capture_output=True, text=True, env=env).stdout.strip()
    result = step(f"zeroconf=={version} from source, no compiler", [str(venv / "bin" / "pip"), "wheel", "--no-cache-dir", "--no-deps", "--no-binary", "zeroconf", "-w", str(out), f"zeroconf=={version}"], env)
    if result["ok"]:
        import zipfile

        wheel = next(out.glob("*.whl"))
        compiled = [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith((".so", ".pyd"))]
        result["ok"] = not compiled
        result["detail"] = f"{wheel.name}: {len(compiled)} compiled extensions (pure-Python fallback)"
    return result


def resolve_for(label: str, tags: tuple[str, ...], version: str, extra: str | None, expect_ok: bool, wheels: Path, work: Path, env: dict[str, str]) -> dict:
    """Resolve p2pgolf's dependencies for another platform with wheels only (metadata only)."""
    report = work / f"report-{tags[0]}-{version}.json"
    argv = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report), "--only-binary", ":all:",
            "--python-version", version, "--implementation", "cp", "--target", str(work / "never"), "--find-links", str(wheels)]
    for tag in tags:
        argv += ["--platform", tag]
    # Our own package is a local directory (always built); give pip its dependencies directly.
    argv += _our_requirements() + ([extra] if extra else [])
    out = step(f"wheels only: {label}, Python {version}", argv, {**env, "PATH": os.environ["PATH"]}, expect_ok=expect_ok)
    if out["ok"]:
        installs = json.loads(report.read_text())["install"]
        out["detail"] = f"{len(installs)} wheels, none needing a compiler"
    return out


def _our_requirements() -> list[str]:
    """p2pgolf's install requirements as setup.py computes them (the stand-in's URL included)."""
    import ast

    tree = ast.parse((REPO / "setup.py").read_text())
    reqs = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "DEPENDENCIES":
            for elt in node.value.elts:
                reqs.append(elt.value if isinstance(elt, ast.Constant) else None)
    stand_in = (REPO / "shims" / "fastecdsa").as_uri()
    return [r if r is not None else f"fastecdsa @ {stand_in}" for r in reqs]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    m, s = result["machine"], result["settings"]
    console = Console()
    console.print(f"machine: {m['platform']}, python {m['python']}, {m['cpus']} CPUs")
    console.print(f"settings: extras={s['extras'] or '-'}  compiler on PATH: {s['compiler_on_path'] or 'none'}  CC={s['CC']}")
    from rich.markup import escape

    table = Table("step", "expected", "outcome", "s", "detail")
    for st in result["steps"]:
        table.add_row(escape(st["step"]), "ok" if st["expect_ok"] else "fail", "ok" if st["ok"] else "FAILED", f"{st['seconds']:.1f}", escape(st["detail"]))
    console.print(table)
    install = next((st for st in result["steps"] if st["step"].startswith("pip install \"")), None)
    if install is not None:
        console.print(f"built from source: {', '.join(w for _, w in install.get('built', [])) or 'nothing'}; C extensions among them: {', '.join(install.get('c_extensions_built', [])) or 'none'}")
    console.print("all as expected" if result["all_as_expected"] else "NOT all as expected")


if __name__ == "__main__":
    main()
