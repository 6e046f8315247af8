"""What the numbers were measured on (CPU, flags, GPUs, versions), and the model's FLOPs vs the CPU's peak."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from fashion_cnn.costs import layer_costs
from fashion_cnn.model import ModelConfig

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


def compute(model_config: ModelConfig, machine: dict[str, Any]) -> dict[str, Any]:
    """FLOPs per training image from the layer list, and the CPU's FP32 peak to hold GFLOP/s against."""
    multiply_adds = sum(cost.multiply_adds for cost in layer_costs(model_config))
    flags = machine["flags"]
    # FP32 FLOP per cycle and core: 2 FMA units x 16 (AVX-512) or 8 (AVX2) lanes x 2, else SSE's 4 lanes x 2.
    per_cycle = 64 if flags["avx512f"] else 32 if flags["avx2"] and flags["fma"] else 8
    cores, gigahertz = (
        min(machine["usable_cpus"], machine["physical_cores"]),
        (machine["cpu_mhz"] or 0) / 1000,
    )
    return {
        # Training = 3 x forward: the backward pass holds two products the size of the forward one (weight
        # and input gradients). Pooling, activations, loss and optimizer are element-wise: far below 1 %.
        "training_gflop_per_image": 6 * multiply_adds / 1e9,
        "derivation": f"{multiply_adds:,} multiply-adds per image in the conv and dense layers x 2 FLOP = "
        "forward; training = 3 x forward (weight and input gradients)",
        "peak_gflops": cores * per_cycle * gigahertz,
        "assumption": f"{cores} cores x {per_cycle} FP32 FLOP/cycle x {gigahertz:.3f} GHz ('cpu MHz' in "
        "/proc/cpuinfo; a boost clock above it would raise the peak and lower the shares)",
    }
