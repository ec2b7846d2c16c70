"""Which training backend runs an experiment: MLX on Apple silicon, torch elsewhere.

What it guarantees: `resolve_backend("auto" | "torch" | "mlx")` returns "torch" or "mlx", or
raises BackendUnavailable with one line naming the backend, the missing package and the command
that installs it. It never imports torch or MLX (it only asks whether they are installed), so
the command line stays fast. `check_device` refuses a device the backend cannot use up front;
`resolve_mlx_device` maps a run's device setting to MLX's.
"""

from __future__ import annotations

import importlib.util
import platform

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "is_apple_silicon",
    "installed",
    "check_device",
    "resolve_backend",
    "resolve_mlx_device",
]

BACKENDS = ("auto", "torch", "mlx")
_PACKAGE = {"torch": "torch", "mlx": "mlx"}
_INSTALL = {
    "torch": "pip install 'p2pgolf[torch]'",
    "mlx": "pip install 'p2pgolf[mlx]' (on Linux: pip install 'mlx[cpu]')",
}


class BackendUnavailable(RuntimeError):
    """The chosen backend cannot run here; the message says why and what to install."""


def is_apple_silicon() -> bool:
    """True on a Mac with an Apple chip (arm64 macOS), where MLX uses the GPU."""
    return platform.system() == "Darwin" and platform.machine() == "arm64"


def installed(backend: str) -> bool:
    """Whether the backend's package can be imported (without importing it)."""
    return importlib.util.find_spec(_PACKAGE[backend]) is not None


def resolve_backend(requested: str = "auto") -> str:
    """The backend to run: `auto` is MLX on Apple silicon and torch elsewhere."""
    if requested not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    backend = requested
    why = ""
    if requested == "auto":
        backend = "mlx" if is_apple_silicon() else "torch"
        why = " (chosen by --backend auto on this machine)"
    if not installed(backend):
        other = "torch" if backend == "mlx" else "mlx"
        hint = f", or pass --backend {other}" if requested == "auto" and installed(other) else ""
        raise BackendUnavailable(
            f"the {backend} backend{why} needs the {_PACKAGE[backend]} package, which is not installed: "
            f"{_INSTALL[backend]}{hint}"
        )
    return backend


def check_device(backend: str, device: str) -> None:
    """Refuse, before anything starts, a device the resolved backend never runs on."""
    if backend == "mlx" and device not in ("auto", "cpu", "mps"):
        raise BackendUnavailable(f"device {device!r} is not one the mlx backend runs on (auto, cpu or mps); use --backend torch for it")


def resolve_mlx_device(device: str, *, metal_available: bool) -> str:
    """MLX device for a run's device setting: "gpu" or "cpu". auto takes the GPU where Metal is."""
    if device == "auto":
        return "gpu" if metal_available else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "mps":
        if not metal_available:
            raise BackendUnavailable("device mps (the Apple GPU) is not available to MLX on this machine; use --device cpu")
        return "gpu"
    raise BackendUnavailable(f"device {device!r} is not one the mlx backend runs on (auto, cpu or mps); use --backend torch for it")
