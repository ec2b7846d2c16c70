"""Backend choice (trainer/backend.py): auto picks MLX on Apple silicon and torch elsewhere, and a
missing package is a one-line error naming the package and the install command."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from p2pgolf.trainer.backend import BackendUnavailable, check_device, is_apple_silicon, resolve_backend, resolve_mlx_device

REPO = Path(__file__).resolve().parents[1]


def test_auto_is_mlx_on_apple_silicon_and_torch_elsewhere():
    assert resolve_backend("auto") == ("mlx" if is_apple_silicon() else "torch")


def test_explicit_backends_resolve_to_themselves_when_installed():
    pytest.importorskip("torch")
    pytest.importorskip("mlx.core")
    assert resolve_backend("torch") == "torch"
    assert resolve_backend("mlx") == "mlx"


def test_unknown_backend_is_refused_naming_the_choices():
    with pytest.raises(BackendUnavailable, match="unknown backend 'jax'; choose one of auto, torch, mlx"):
        resolve_backend("jax")


def test_mlx_device_mapping_refuses_cuda_and_a_missing_apple_gpu():
    for device in ("auto", "cpu", "mps"):
        check_device("mlx", device)
    for device in ("auto", "cpu", "cuda", "mps"):
        check_device("torch", device)
    with pytest.raises(BackendUnavailable, match="use --backend torch for it"):
        check_device("mlx", "cuda")
    assert resolve_mlx_device("auto", metal_available=False) == "cpu"
    assert resolve_mlx_device("auto", metal_available=True) == "gpu"
    assert resolve_mlx_device("mps", metal_available=True) == "gpu"
    assert resolve_mlx_device("cpu", metal_available=True) == "cpu"
    with pytest.raises(BackendUnavailable, match="device mps .* not available"):
        resolve_mlx_device("mps", metal_available=False)
    with pytest.raises(BackendUnavailable, match="device 'cuda' is not one the mlx backend runs on"):
        resolve_mlx_device("cuda", metal_available=True)


def test_missing_backend_package_names_the_package_and_the_install_command(tmp_path):
    # A real environment without torch or MLX: a fresh virtual environment with no packages.
    env_dir = tmp_path / "bare"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    # our rooms as the installed layout names them (p2pgolf.trainer, ...), without installing
    src = tmp_path / "src" / "p2pgolf"
    src.mkdir(parents=True)
    for room in ("protocol", "trainer"):
        (src / room).symlink_to(REPO / room, target_is_directory=True)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from p2pgolf.trainer.backend import BackendUnavailable, resolve_backend\n"
        "for name in ('mlx', 'torch', 'auto'):\n"
        "    try:\n"
        "        resolve_backend(name)\n"
        "    except BackendUnavailable as exc:\n"
        "        print(exc)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(python), "-c", code, str(src.parent)], capture_output=True, text=True, timeout=60, check=True, env=env)
    lines = out.stdout.splitlines()
    assert len(lines) == 3
    assert lines[0] == (
        "the mlx backend needs the mlx package, which is not installed: "
        "pip install 'p2pgolf[mlx]' (on Linux: pip install 'mlx[cpu]')"
    )
    assert lines[1] == "the torch backend needs the torch package, which is not installed: pip install 'p2pgolf[torch]'"
    chosen = "mlx" if is_apple_silicon() else "torch"
    assert lines[2].startswith(f"the {chosen} backend (chosen by --backend auto on this machine) needs the {chosen} package")
