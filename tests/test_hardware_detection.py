"""Hardware class detection: stable names, cores actually usable, and the right accelerator."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from p2pgolf.protocol.records import HardwareClass
from p2pgolf.trainer.hardware import HardwareError, clean_model_name, cpu_model_from_cpuinfo, detect_hardware, gpus_from_nvidia_smi

REPO = Path(__file__).resolve().parents[1]
NO_GPU = shutil.which("nvidia-smi") is None and sys.platform.startswith("linux")


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("Intel(R) Xeon(R) Platinum 8480+", "Intel Xeon Platinum 8480+"),
        ("Intel(R) Core(TM) i7-9750H CPU @ 2.60GHz", "Intel Core i7-9750H"),
        ("AMD EPYC 7763 64-Core Processor", "AMD EPYC 7763 64-Core Processor"),
        ("  Apple   M4 Pro\n", "Apple M4 Pro"),
        ("NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 4090"),
        ("x" * 200, "x" * 80),
    ],
)
def test_model_names_drop_marks_and_clock_so_the_same_part_compares_equal(raw, clean):
    assert clean_model_name(raw) == clean


def test_cpuinfo_model_is_read_for_x86_and_arm():
    x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz\n"
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\n\nHardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"
    assert cpu_model_from_cpuinfo(x86) == "Intel Xeon E5-2686 v4"
    assert cpu_model_from_cpuinfo(arm) == "BCM2835"
    assert cpu_model_from_cpuinfo("processor\t: 0\n") is None


def test_nvidia_smi_rows_respect_cuda_visible_devices():
    csv = "0, NVIDIA H100 80GB HBM3, 81559\n1, NVIDIA H100 80GB HBM3, 81559\n2, NVIDIA A100-SXM4-40GB, 40960\n"
    assert gpus_from_nvidia_smi(csv) == [("NVIDIA H100 80GB HBM3", 81559)] * 2 + [("NVIDIA A100-SXM4-40GB", 40960)]
    assert gpus_from_nvidia_smi(csv, "2,0") == [("NVIDIA A100-SXM4-40GB", 40960), ("NVIDIA H100 80GB HBM3", 81559)]
    assert gpus_from_nvidia_smi(csv, "") == []
    assert len(gpus_from_nvidia_smi(csv, "GPU-1234abcd")) == 3  # ids we cannot map: all GPUs
    assert gpus_from_nvidia_smi("No devices were found\n") == []


@pytest.mark.skipif(not NO_GPU, reason="this check is for Linux machines without a GPU")
def test_this_machine_is_a_valid_cpu_class_with_the_cores_we_may_use():
    hw = detect_hardware()
    assert hw.accel == "cpu" and hw == detect_hardware("cpu")
    assert HardwareClass.from_wire(hw.to_wire()) == hw  # passes the record validator
    assert "(R)" not in hw.model and "GHz" not in hw.model and hw.model != "unknown"
    assert hw.count == len(os.sched_getaffinity(0)) or Path("/sys/fs/cgroup/cpu.max").read_text().split()[0] != "max"
    meminfo_kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
    assert 0 < hw.memory_mib <= meminfo_kb // 1024


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity")
def test_cpu_count_follows_the_cores_the_process_may_use():
    code = "import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); from p2pgolf.trainer.hardware import detect_hardware; print(detect_hardware('cpu').count)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "1"


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_asking_for_an_absent_accelerator_says_what_was_looked_for():
    with pytest.raises(HardwareError, match="no CUDA GPU found"):
        detect_hardware("cuda")
    with pytest.raises(HardwareError, match="no Apple silicon GPU"):
        detect_hardware("mps")
    with pytest.raises(HardwareError, match="unknown accelerator 'tpu'"):
        detect_hardware("tpu")
