"""Which hardware class a run is measured on: accelerator kind, model, count, memory.

The strings are stable and comparable across machines of the same kind, because the estimator
groups results by `HardwareClass.key` (accel:model:xcount):
- CUDA: model is the driver's GPU name ("NVIDIA H100 80GB HBM3"), count the visible GPUs
  (CUDA_VISIBLE_DEVICES respected), memory_mib one GPU's memory. Read from `nvidia-smi`; torch is
  asked only when nvidia-smi is missing and torch is already imported, or CUDA was asked for
  explicitly - importing torch just to look costs seconds.
- Apple silicon: accel "mps", model the chip ("Apple M4 Pro", from sysctl
  machdep.cpu.brand_string), count 1, memory_mib the unified memory (hw.memsize).
- CPU: accel "cpu", model the processor name with trademark marks and clock speed removed
  ("Intel Xeon Platinum 8480+"), count the cores this process may use (affinity and cgroup
  quota), since that is what sets CPU training speed; memory_mib the RAM (or cgroup limit).
`detect_hardware()` picks the first of cuda, mps, cpu the machine has; a backend that trains on
another device than the best one passes that device (`detect_hardware("cpu")`), so a record
names the hardware that actually did the work.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys

from p2pgolf.protocol.records import MAX_SHORT_STR, HardwareClass

ACCELS = ("cuda", "mps", "cpu")
_TIMEOUT_S = 10


class HardwareError(RuntimeError):
    """The requested accelerator is not present; the message says what was looked for."""


def detect_hardware(accel: str | None = None) -> HardwareClass:
    """The hardware class of this machine (best accelerator), or of the named one ('cuda', 'mps', 'cpu')."""
    if accel is not None and accel not in ACCELS:
        raise HardwareError(f"unknown accelerator {accel!r}; expected one of {', '.join(ACCELS)}")
    if accel in (None, "cuda"):
        hw = _cuda(use_torch=accel == "cuda" or "torch" in sys.modules)
        if hw is not None:
            return hw
        if accel == "cuda":
            raise HardwareError("no CUDA GPU found (nvidia-smi lists none and torch.cuda is not available)")
    if accel in (None, "mps"):
        hw = _apple()
        if hw is not None:
            return hw
        if accel == "mps":
            raise HardwareError("no Apple silicon GPU found (needs macOS on arm64)")
    return _cpu()


def clean_model_name(raw: str) -> str:
    """A processor or GPU name without trademark marks, 'CPU', clock speed or extra spaces."""
    name = re.sub(r"\((?:R|TM|tm|r)\)|®|™", "", raw)
    name = re.sub(r"\s*@\s*[\d.]+\s*[GM]Hz", "", name)
    name = re.sub(r"\bCPU\b", "", name)
    name = re.sub(r"[\x00-\x1f\x7f-\x9f]", " ", name)
    name = " ".join(name.split())
    return name[:MAX_SHORT_STR] or "unknown"


def cpu_model_from_cpuinfo(text: str) -> str | None:
    """The processor name from /proc/cpuinfo text (x86 'model name', or Arm 'Hardware'/'Model')."""
    for key in ("model name", "Hardware", "Model", "cpu model"):
        m = re.search(rf"^{re.escape(key)}\s*:\s*(.+)$", text, re.MULTILINE)
        if m and m.group(1).strip():
            return clean_model_name(m.group(1))
    return None


def gpus_from_nvidia_smi(csv: str, visible: str | None = None) -> list[tuple[str, int]]:
    """(name, memory MiB) per GPU from `nvidia-smi --query-gpu=index,name,memory.total
    --format=csv,noheader,nounits`, keeping only those CUDA_VISIBLE_DEVICES lists (if set)."""
    gpus: list[tuple[str, str, int]] = []
    for line in csv.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3:
            continue
        index, name, mem = parts
        try:
            gpus.append((index, clean_model_name(name), int(float(mem))))
        except ValueError:
            continue
    if visible is not None:
        wanted = [v.strip() for v in visible.split(",") if v.strip()]
        if any(not v.isdigit() for v in wanted):  # UUIDs or MIG ids: we cannot map them, keep all
            return [(n, m) for _, n, m in gpus]
        by_index = {i: (n, m) for i, n, m in gpus}
        return [by_index[v] for v in wanted if v in by_index]
    return [(n, m) for _, n, m in gpus]


def _cuda(*, use_torch: bool) -> HardwareClass | None:
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=_TIMEOUT_S, check=True,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        gpus = gpus_from_nvidia_smi(out, os.environ.get("CUDA_VISIBLE_DEVICES"))
        if gpus:
            return _gpu_class(gpus)
    if not use_torch:
        return None
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        gpus.append((clean_model_name(props.name), int(props.total_memory) // (1 << 20)))
    return _gpu_class(gpus) if gpus else None


def _gpu_class(gpus: list[tuple[str, int]]) -> HardwareClass:
    names = sorted({name for name, _ in gpus})
    model = names[0] if len(names) == 1 else clean_model_name("mixed " + " + ".join(names))
    return HardwareClass(accel="cuda", model=model, count=len(gpus), memory_mib=min(m for _, m in gpus))


def _apple() -> HardwareClass | None:
    if platform.system() != "Darwin" or platform.machine() != "arm64":
        return None
    brand = _sysctl("machdep.cpu.brand_string") or "Apple silicon"
    mem = _sysctl("hw.memsize")
    memory_mib = int(mem) // (1 << 20) if mem and mem.isdigit() else 0
    return HardwareClass(accel="mps", model=clean_model_name(brand), count=1, memory_mib=memory_mib)


def _cpu() -> HardwareClass:
    model = None
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                model = cpu_model_from_cpuinfo(f.read())
        except OSError:
            model = None
    elif sys.platform == "darwin":
        brand = _sysctl("machdep.cpu.brand_string")
        model = clean_model_name(brand) if brand else None
    if not model:
        model = clean_model_name(platform.processor() or platform.machine() or "unknown cpu")
    return HardwareClass(accel="cpu", model=model, count=usable_cores(), memory_mib=_memory_mib())


def usable_cores() -> int:
    """Cores this process may run on: CPU affinity, capped by a cgroup v2 CPU quota if any."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max", encoding="ascii").read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, min(cores, 4096))


def _memory_mib() -> int:
    total = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            m = re.search(r"^MemTotal:\s*(\d+)\s*kB", f.read(), re.MULTILINE)
            total = int(m.group(1)) // 1024 if m else 0
    except OSError:
        mem = _sysctl("hw.memsize")
        total = int(mem) // (1 << 20) if mem and mem.isdigit() else 0
    try:
        limit = open("/sys/fs/cgroup/memory.max", encoding="ascii").read().strip()
        if limit.isdigit():
            total = min(total, int(limit) // (1 << 20)) if total else int(limit) // (1 << 20)
    except OSError:
        pass
    return total


def _sysctl(name: str) -> str | None:
    exe = shutil.which("sysctl") or "/usr/sbin/sysctl"
    try:
        out = subprocess.run([exe, "-n", name], capture_output=True, text=True, timeout=_TIMEOUT_S, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip() or None
