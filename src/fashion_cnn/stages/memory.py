"""Stage memory: the per-layer memory and compute report of the configured model (fashion_cnn.model.costs).

`python -m fashion_cnn.stages.memory` writes reports/memory.md and reports/memory.json and prints the
table; with command-line overrides (`model=lenet5 train.batch_size=128`) it only prints, so the
committed report keeps describing params.yaml.
"""

from __future__ import annotations

import sys

from fashion_cnn.config.cli import hydra_overrides, stage_main
from fashion_cnn.model import costs
from fashion_cnn.tracking import record, runs
from fashion_cnn.training.config import ProjectConfig
from fashion_cnn.utils import paths
from fashion_cnn.utils.atomic import write_json_atomic, write_text_atomic

REPORT_MARKDOWN = "memory.md"
REPORT_JSON = "memory.json"


@stage_main
def main(config: ProjectConfig, project: paths.ProjectPaths) -> None:
    """Entry point of `python -m fashion_cnn.stages.memory`."""
    report = costs.memory_report(config.model, config.train.batch_size)
    markdown = costs.format_markdown(report)
    overrides = hydra_overrides()
    if overrides:
        print(markdown)
        print(f"(overrides {' '.join(overrides)}: reports/memory.* left as they are)", file=sys.stderr)
        return
    markdown_path = project.reports_dir / REPORT_MARKDOWN
    json_path = project.reports_dir / REPORT_JSON
    write_text_atomic(markdown_path, markdown)
    write_json_atomic(json_path, report)
    with runs.pipeline_run(project, config, "memory"):
        record.artifacts([markdown_path, json_path])
        record.metrics(
            {
                "parameters": report["totals"]["parameters"],
                "multiply_adds": report["totals"]["multiply_adds"],
                "training_activation_bytes": report["batch"]["training_activation_bytes"]["float32"],
                "inference_activation_bytes": report["batch"]["inference_activation_bytes"]["float32"],
            }
        )
    print(markdown)


if __name__ == "__main__":
    main()
