"""What a number was measured on: CPU model, cores, the ISA flags that decide speed settings, memory,
GPUs and package versions (for reports/metrics.json, the benchmarks and the race)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

# mixed_bfloat16 only pays off with hardware bfloat16 arithmetic.
BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")
# The CPU flags that decide which speed settings apply (AVX2/AVX-512 kernels, bfloat16, AMX).
RELEVANT_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512_vnni",
    "amx_tile",
    *BFLOAT16_FLAGS,
)
# The project's dependencies that set the speed.
PACKAGES = ("tensorflow", "keras", "numpy", "dvc", "mlflow", "hydra-core")


def read_cpuinfo(path: Path = Path("/proc/cpuinfo")) -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict per logical CPU (none where the file does not exist)."""
    blocks = path.read_text().strip().split("\n\n") if path.is_file() else []
    return [
        dict(map(str.strip, line.split(":", 1)) for line in block.splitlines() if ":" in line)
        for block in blocks
    ]


def gpu_names() -> list[str]:
    """Names of the NVIDIA GPUs nvidia-smi lists (none without the tool)."""
    if shutil.which("nvidia-smi") is None:
        return []
    command = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
    return subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=30
    ).stdout.splitlines()


def hardware() -> dict[str, Any]:
    """CPU model, logical, usable and physical cores, clock, relevant flags, memory and GPUs."""
    processors = read_cpuinfo() or [{}]
    flags = set(processors[0].get("flags", "").split())
    cores = {(cpu.get("physical id"), cpu["core id"]) for cpu in processors if "core id" in cpu}
    return {
        "cpu_model": processors[0].get("model name", platform.processor() or "unknown"),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "physical_cores": len(cores) or os.cpu_count(),
        "cpu_mhz": float(processors[0].get("cpu MHz", 0)) or None,
        "flags": {flag: flag in flags for flag in RELEVANT_FLAGS},
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1),
        "gpus": gpu_names(),
        "platform": platform.platform(),
    }


def versions() -> dict[str, str]:
    """Python and the installed versions of the packages that set the speed (without importing them)."""
    return {"python": platform.python_version()} | {
        name: importlib.metadata.version(name) for name in PACKAGES
    }


def cpu_model() -> str:
    """The CPU's model name, e.g. 'AMD EPYC' (the platform's processor where /proc/cpuinfo is missing)."""
    processors = read_cpuinfo() or [{}]
    return processors[0].get("model name") or platform.processor() or platform.machine()
