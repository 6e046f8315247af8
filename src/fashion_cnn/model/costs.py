"""What a model costs: parameters, multiply-adds and activation memory per layer, per image and per batch.

This is the seed's "Memory Requirements" section applied to the configured architecture. During
training every layer's output is kept for backpropagation; during inference a layer's output can be
freed once the next layer is computed, so only two consecutive layers are held at a time. Sizes use
decimal units (1 MB = 10^6 bytes), as the seed does. The memory stage writes the report;
training/memory_check.py adds the weights' training state and stops the train stage when the estimate
exceeds the free memory.
"""

from __future__ import annotations

import math
from typing import Any

from fashion_cnn.model.architecture import LayerShape, ModelConfig, infer_shapes
from fashion_cnn.model.spatial_layers import ConvLayer

FLOAT32_BYTES = 4
# float16 and bfloat16 both take two bytes per value.
HALF_BYTES = 2
REPORT_MARKDOWN = "memory.md"
REPORT_JSON = "memory.json"
# The seed's worked example: 5x5 conv, 200 maps, stride 1, "same", on a 150x100 RGB image, batch 100.
SEED_EXAMPLE = {"input_hw": (150, 100), "channels": 3, "kernel": 5, "filters": 200, "batch_size": 100}


def output_bytes(shape: LayerShape, dtype_bytes: int = FLOAT32_BYTES) -> int:
    """Memory of a layer's output for one image, at `dtype_bytes` per value."""
    return math.prod(shape.output_shape) * dtype_bytes


def conv_layer_cost(
    input_hw: tuple[int, int],
    channels: int,
    kernel: int,
    filters: int,
    stride: int = 1,
    padding: str = "same",
) -> LayerShape:
    """One conv layer on an image of `input_hw` x `channels`, by the conv entry's own arithmetic."""
    layer = ConvLayer(type="conv", filters=filters, kernel_size=kernel, strides=stride, padding=padding)
    output_shape, parameters, multiply_adds = layer.output((*input_hw, channels))
    return LayerShape(0, layer, (*input_hw, channels), output_shape, parameters, multiply_adds)


def _by_dtype(values: int) -> dict[str, int]:
    """Bytes of `values` numbers in float32 and in a 16-bit float."""
    return {"float32": values * FLOAT32_BYTES, "float16": values * HALF_BYTES}


def memory_report(model_config: ModelConfig, batch_size: int) -> dict[str, Any]:
    """Per-layer costs, totals, and the memory one batch needs for training and for inference."""
    # The input image is the first row: it is held in memory like a layer's output.
    rows = [
        {"name": "input", "description": "image", "output_shape": list(model_config.input_shape),
         "parameters": 0, "multiply_adds": 0},
    ] + [
        {"name": shape.name, "description": shape.layer.description, "output_shape": list(shape.output_shape),
         "parameters": shape.parameters, "multiply_adds": shape.multiply_adds}
        for shape in infer_shapes(model_config)
    ]  # fmt: skip
    values = [math.prod(row["output_shape"]) for row in rows]
    for row, count in zip(rows, values, strict=True):
        row["activation_bytes"] = _by_dtype(count)
    pair_values = [first + second for first, second in zip(values[:-1], values[1:], strict=True)]
    peak = max(range(len(pair_values)), key=pair_values.__getitem__)
    parameters = sum(row["parameters"] for row in rows)
    return {
        "model": model_config.name,
        "input_shape": list(model_config.input_shape),
        "batch_size": batch_size,
        "units": "bytes; float16 columns also hold for bfloat16",
        "layers": rows,
        "totals": {
            "parameters": parameters,
            "parameter_bytes": parameters * FLOAT32_BYTES,
            "multiply_adds": sum(row["multiply_adds"] for row in rows),
            "activation_bytes": _by_dtype(sum(values)),
        },
        "batch": {
            # Backpropagation needs every layer's output of the forward pass.
            "training_activation_bytes": _by_dtype(batch_size * sum(values)),
            # Inference frees a layer's output once the next one is computed.
            "inference_activation_bytes": _by_dtype(batch_size * pair_values[peak]),
            "inference_peak_layers": [rows[peak]["name"], rows[peak + 1]["name"]],
        },
    }


def format_bytes(count: float) -> str:
    """Decimal units, as the seed: 12000000 -> '12.0 MB'."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g} {unit}" if count / scale < 100 else f"{count / scale:.0f} {unit}"
    return f"{count:.0f} B"


def seed_example_line() -> str:
    """The seed's worked example, recomputed by conv_layer_cost."""
    example = SEED_EXAMPLE
    cost = conv_layer_cost(example["input_hw"], example["channels"], example["kernel"], example["filters"])
    height, width = example["input_hw"]
    return (
        f'A 5x5 conv with {example["filters"]} feature maps of {height}x{width}, stride 1, "same" padding, '
        f"on a {height}x{width} RGB image: {cost.parameters:,} parameters, {cost.multiply_adds:,} "
        f"multiplications, {format_bytes(output_bytes(cost))} per instance in float32 and "
        f"{format_bytes(output_bytes(cost) * example['batch_size'])} for a batch of {example['batch_size']}."
    )


def format_markdown(report: dict[str, Any]) -> str:
    """The report as a markdown page: one row per layer, totals, then one batch."""
    shape = "x".join(str(side) for side in report["input_shape"])
    lines = [
        f"# Memory report: {report['model']}",
        "",
        f"Input {shape}, batch size {report['batch_size']} (`train.batch_size`). Computed by "
        'the memory stage as the seed\'s section "Memory Requirements" explains; '
        "decimal units, 1 MB = 10^6 bytes; the 16-bit column holds for float16 and bfloat16.",
        "",
        "| Layer | Kind | Output shape | Parameters | Multiply-adds / image | Activations / image, "
        "float32 | 16-bit |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for layer in report["layers"]:
        lines.append(
            f"| {layer['name']} | {layer['description']} | {'x'.join(map(str, layer['output_shape']))} | "
            f"{layer['parameters']:,} | {layer['multiply_adds']:,} | "
            f"{format_bytes(layer['activation_bytes']['float32'])} | "
            f"{format_bytes(layer['activation_bytes']['float16'])} |"
        )
    totals, batch = report["totals"], report["batch"]
    lines.append(
        f"| **Total** | | | **{totals['parameters']:,}** | **{totals['multiply_adds']:,}** | "
        f"**{format_bytes(totals['activation_bytes']['float32'])}** | "
        f"**{format_bytes(totals['activation_bytes']['float16'])}** |"
    )
    training, inference = batch["training_activation_bytes"], batch["inference_activation_bytes"]
    peak = " + ".join(batch["inference_peak_layers"])
    lines += [
        "",
        f"## One batch of {report['batch_size']} images",
        "",
        "| Activations held | float32 | 16-bit |",
        "|---|---:|---:|",
        f"| Training: every layer's output, kept for backpropagation | {format_bytes(training['float32'])} | "
        f"{format_bytes(training['float16'])} |",
        f"| Inference: the two consecutive layers that need most ({peak}) | "
        f"{format_bytes(inference['float32'])} | {format_bytes(inference['float16'])} |",
        "",
        f"The weights take {format_bytes(totals['parameter_bytes'])} in float32; training also keeps their "
        "gradients and the optimizer's state (`fashion_cnn.training.memory_check` adds them).",
        "",
        "## The seed's worked example",
        "",
        seed_example_line(),
        "",
    ]
    return "\n".join(lines)
