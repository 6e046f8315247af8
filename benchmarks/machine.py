"""What the numbers were measured on: CPU, flags, versions, and the compute cost of the model vs peak."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from fashion_cnn.config import ModelConfig
from fashion_cnn.memory import layer_costs

# The CPU flags that decide which speed settings apply (AVX2/AVX-512 kernels, bfloat16, AMX).
RELEVANT_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "amx_tile",
    "amx_bf16",
)
# mixed_bfloat16 only pays off with hardware bfloat16 arithmetic.
BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")
PACKAGES = ("tensorflow", "keras", "numpy", "dvc", "mlflow", "hydra-core")


def read_cpuinfo(path: Path = Path("/proc/cpuinfo")) -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict per logical CPU (empty where the file does not exist)."""
    if not path.is_file():
        return []
    processors, current = [], {}
    for line in path.read_text().splitlines():
        if not line.strip():
            if current:
                processors.append(current)
            current = {}
            continue
        key, _, value = line.partition(":")
        current[key.strip()] = value.strip()
    if current:
        processors.append(current)
    return processors


def gpu_names() -> list[str]:
    """Names of the NVIDIA GPUs nvidia-smi lists (none without the tool)."""
    if shutil.which("nvidia-smi") is None:
        return []
    result = subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def hardware() -> dict[str, Any]:
    """CPU model, logical and physical cores, clock, relevant flags, memory and GPUs."""
    processors = read_cpuinfo()
    first = processors[0] if processors else {}
    flags = set(first.get("flags", "").split())
    physical = {(cpu.get("physical id"), cpu.get("core id")) for cpu in processors}
    memory_kb = 0
    if Path("/proc/meminfo").is_file():
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    return {
        "cpu_model": first.get("model name", platform.processor() or "unknown"),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "physical_cores": len(physical) if None not in {item[1] for item in physical} else os.cpu_count(),
        "cpu_mhz": float(first["cpu MHz"]) if "cpu MHz" in first else None,
        "flags": {flag: flag in flags for flag in RELEVANT_FLAGS},
        "memory_gb": round(memory_kb / 1024**2, 1),
        "gpus": gpu_names(),
        "platform": platform.platform(),
    }


def versions() -> dict[str, str]:
    """Python and the installed versions of the packages that matter for speed (without importing them)."""
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def training_flops(model_config: ModelConfig) -> dict[str, Any]:
    """FLOPs per training image from the layer list: forward = 2 x multiply-adds, training = 3 x forward.

    The backward pass of a conv or dense layer is two products the size of its forward one: the
    gradient of the weights and the gradient of the input; the first layer needs no input gradient,
    which the exact figure subtracts. Pooling, activations, the loss and the optimizer update are
    element-wise and far below 1 % of the total, so they are left out.
    """
    costs = layer_costs(model_config)
    forward = 2 * sum(cost.multiply_adds for cost in costs)
    first_layer = 2 * next((cost.multiply_adds for cost in costs if cost.multiply_adds), 0)
    training = 3 * forward
    return {
        "forward_gflop_per_image": forward / 1e9,
        "training_gflop_per_image": training / 1e9,
        "training_gflop_per_image_exact": (training - first_layer) / 1e9,
        "derivation": (
            f"sum of multiply-adds of the conv and dense layers = {forward // 2:,} per image; "
            f"forward = 2 FLOP per multiply-add = {forward / 1e9:.4f} GFLOP; backward = 2 x forward "
            f"(weight and input gradients) so training = 3 x forward = {training / 1e9:.4f} GFLOP "
            f"({(training - first_layer) / 1e9:.4f} without the first layer's unused input gradient)"
        ),
    }


def flop_per_cycle_per_core(flags: dict[str, bool]) -> tuple[int, str]:
    """FP32 FLOP per cycle per core from the vector ISA, and the assumption behind it."""
    if flags.get("avx512f"):
        return 64, "AVX-512: 2 FMA units x 16 FP32 lanes x 2 FLOP (1 unit on some CPUs: half)"
    if flags.get("avx2") and flags.get("fma"):
        return 32, "AVX2: 2 FMA units x 8 FP32 lanes x 2 FLOP per FMA"
    return 8, "SSE: 4 FP32 lanes x 2 (separate add and multiply units)"


def peak_gflops(machine: dict[str, Any]) -> dict[str, Any]:
    """The machine's FP32 peak: physical cores x FLOP/cycle x the clock /proc/cpuinfo reports."""
    per_cycle, assumption = flop_per_cycle_per_core(machine["flags"])
    cores = machine["usable_cpus"] or machine["physical_cores"] or 1
    cores = min(cores, machine["physical_cores"] or cores)
    gigahertz = (machine["cpu_mhz"] or 0) / 1000
    return {
        "peak_gflops": cores * per_cycle * gigahertz,
        "cores": cores,
        "flop_per_cycle_per_core": per_cycle,
        "ghz": gigahertz,
        "assumption": (
            f"{cores} cores x {per_cycle} FP32 FLOP/cycle ({assumption}) x {gigahertz:.3f} GHz "
            f"('cpu MHz' in /proc/cpuinfo; a boost clock above it would raise the peak and lower "
            f"the fractions)"
        ),
    }
