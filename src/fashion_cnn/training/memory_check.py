"""Will training fit in memory? The model's activations (model/costs.py) plus the weights, their
gradients and the optimizer's state, checked against free RAM before the train stage starts."""

from __future__ import annotations

import os

from fashion_cnn.errors import ConfigError
from fashion_cnn.model.costs import format_bytes, memory_report
from fashion_cnn.training.config import ProjectConfig

# Per-parameter tensors an optimizer keeps besides the weights (Adam-style: first and second moments).
OPTIMIZER_SLOTS = {"nadam": 2, "adam": 2, "rmsprop": 1, "sgd": 1}


def estimate_training_bytes(config: ProjectConfig) -> int:
    """Lower bound of training memory: a batch's activations plus weights, gradients and optimizer state."""
    half = config.train.mixed_precision in ("mixed_float16", "mixed_bfloat16")
    report = memory_report(config.model, config.train.batch_size)
    activations = report["batch"]["training_activation_bytes"]["float16" if half else "float32"]
    slots = OPTIMIZER_SLOTS[config.train.optimizer]
    if config.train.optimizer == "sgd" and config.train.momentum == 0:
        slots = 0
    # Weights and gradients stay float32 under mixed precision (Keras keeps float32 master weights).
    return activations + report["totals"]["parameter_bytes"] * (2 + slots)


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def memory_warning(config: ProjectConfig, available_bytes: int | None = None) -> str | None:
    """One line when the training estimate exceeds `available_bytes` (default: free RAM), else None."""
    available = available_memory_bytes() if available_bytes is None else available_bytes
    needed = estimate_training_bytes(config)
    if available is None or needed <= available:
        return None
    return (
        f"training {config.model.name} with train.batch_size = {config.train.batch_size} needs about "
        f"{format_bytes(needed)} (estimated) but only {format_bytes(available)} is available; lower "
        f"train.batch_size or use train.mixed_precision"
    )


# Set to 1 to train even when the memory estimate exceeds the available memory.
IGNORE_MEMORY_ENV_VAR = "FASHION_CNN_IGNORE_MEMORY_CHECK"


def check_memory(config: ProjectConfig, available_bytes: int | None = None) -> str | None:
    """ConfigError when training would not fit in memory; with $FASHION_CNN_IGNORE_MEMORY_CHECK=1 the
    same line comes back as a warning to print, and training goes on."""
    warning = memory_warning(config, available_bytes)
    if warning is None or os.environ.get(IGNORE_MEMORY_ENV_VAR) == "1":
        return warning
    raise ConfigError(f"{warning}; {IGNORE_MEMORY_ENV_VAR}=1 goes on anyway")
