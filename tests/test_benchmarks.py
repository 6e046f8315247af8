"""The benchmark harness on tiny data (the seed's code and the train stage's fit, two timed steps each),
and the start-up benchmark's parsing, summary and generated table (fast: no dvc, no TensorFlow)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from benchmarks import pipeline_timing, startup, startup_table, table, train_throughput
from fashion_cnn.errors import FashionCnnError


# Two fresh TensorFlow processes: more than the ~10 s a fast test may take.
@pytest.mark.slow
def test_harness_reports_both_variants_with_positive_numbers(
    tmp_path: Path, synthetic_prepared: Path, repo_root: Path
) -> None:
    options = train_throughput.parse_arguments(
        ["--variants", "project", "--steps", "2", "--warmup", "1", "--repeats", "1"]
        + ["--prepared-dir", str(synthetic_prepared), "--no-stage", "--no-pipeline"]
    )
    options.root, options.scratch = repo_root, tmp_path / "scratch"
    report_file = tmp_path / "benchmarks.json"
    train_throughput.run_benchmark(options, report_file)
    report = json.loads(report_file.read_text())

    assert report["complete"] is True
    assert train_throughput.failed_runs(report) == []
    assert {"hardware", "versions", "settings", "compute", "runs", "variants"} <= set(report)
    assert report["hardware"]["logical_cpus"] > 0 and "avx2" in report["hardware"]["flags"]
    assert {"python", "tensorflow", "keras", "numpy"} <= set(report["versions"])
    # The seed's Sequential and params.yaml's layer list are the same 1,413,834-parameter network.
    assert report["settings"]["same_architecture"] is True
    # 3 x forward FLOPs of the seed model (see test_memory's multiply-add count): about 0.54 GFLOP.
    assert report["compute"]["training_gflop_per_image"] == pytest.approx(0.5368, abs=1e-4)
    assert report["compute"]["peak_gflops"] > 0
    assert [(run["variant"], run["timed_steps"]) for run in report["runs"]] == [("seed", 2), ("project", 2)]
    for name in ("seed", "project"):
        entry = report["variants"][name]
        assert entry["successful_runs"] == 1
        for key in ("images_per_second", "ratio_vs_seed", "seconds_to_first_step_done"):
            assert entry[key]["median"] > 0, (name, key)
        assert entry["gflops"] > 0 and entry["peak_rss_mb"] > 0
        # What ran, read back from the model once fit had started (float32: neither sets a policy).
        assert {"device", "jit_compile", "dtype_policy"} <= set(entry["effective"]), name
        assert entry["effective"]["dtype_policy"] == ["float32"], name
    # The project's run records the train stage's read-back: params.yaml has jit_compile off, determinism on.
    assert report["runs"][1]["effective"]["jit_compile"] is False
    assert report["runs"][1]["effective"]["deterministic"] is True
    markdown = table.format_report(report)
    assert "| `seed` |" in markdown and "| `project` |" in markdown and "XLA as run" in markdown


# ---- the start-up benchmark (benchmarks.startup): no dvc, no TensorFlow ----

DONE_LINE = "stage train done in 14.2 s: 9.8 s its work, 4.4 s starting (Python, imports, config)\n"

# What `dvc repro` prints (stdout and stderr merged), each line with the second it arrived.
DVC_LINES = [
    (0.1, "Reproducing experiment 'quick'\n"),
    (1.5, "Running stage 'download':\n"),
    (1.6, "> python -m fashion_cnn.stages.download\n"),
    (3.0, "Running stage 'prepare':\n"),
    (4.1, "Generating lock file 'dvc.lock'\n"),
    (4.5, "Running stage 'train':\n"),
    (18.0, "Epoch 1/1\n"),
    (18.9, DONE_LINE),
    (19.5, "Updating lock file 'dvc.lock'\n"),
]


def test_stage_done_line_gives_the_stages_own_split() -> None:
    assert startup.parse_stage_done(DONE_LINE) == {
        "name": "train",
        "total_seconds": 14.2,
        "work_seconds": 9.8,
        "startup_seconds": 4.4,
    }
    assert startup.parse_stage_done("stage train done in 14.2 s\n") is None
    assert startup.parse_stage_done("Running stage 'train':\n") is None


def test_stage_timing_from_dvc_lines() -> None:
    starts = pipeline_timing.stage_starts(DVC_LINES)
    assert starts == [("download", 1.5), ("prepare", 3.0), ("train", 4.5)]
    assert pipeline_timing.stage_seconds(starts, 21.0) == pytest.approx(
        {"download": 1.5, "prepare": 1.5, "train": 16.5}
    )
    record = startup.run_record("candidate", 1, pipeline_timing.ReproRun(21.0, DVC_LINES), 12.5)
    assert record["total_seconds"] == 21.0 and record["dvc_start_seconds"] == 1.5
    assert record["stages_run"] == ["download", "prepare", "train"]
    assert record["stage_seconds"]["train"] == pytest.approx(16.5)
    # The split belongs to the stage running when its line arrived; the others printed none.
    assert record["stage_split"] == {
        "download": None,
        "prepare": None,
        "train": {"total_seconds": 14.2, "work_seconds": 9.8, "startup_seconds": 4.4},
    }
    assert record["train_seconds"] == 12.5
    assert pipeline_timing.ReproRun(21.0, DVC_LINES).up_to_date is False
    assert pipeline_timing.ReproRun(0.9, [(0.8, "Data and pipelines are up to date.\n")]).up_to_date


def test_rounds_alternate_which_checkout_goes_first() -> None:
    assert [startup.round_order(index) for index in range(3)] == [
        ("baseline", "candidate"),
        ("candidate", "baseline"),
        ("baseline", "candidate"),
    ]


def fake_run(checkout: str, round_index: int, total: float, stages: dict[str, float], **extra) -> dict:
    """A run record as benchmarks.startup.run_record makes it, with made-up seconds."""
    split = extra.get("split")
    return {
        "checkout": checkout,
        "round": round_index,
        "total_seconds": total,
        "dvc_start_seconds": extra.get("dvc_start", 1.0),
        "stages_run": list(stages),
        "stage_seconds": stages,
        "stage_split": {name: split if name == "train" else None for name in stages},
        "train_seconds": extra.get("train_seconds"),
    }


def fake_runs() -> list[dict]:
    """Three rounds: the baseline has an extra `memory` stage, the candidate prints its train split."""
    old = {"download": 2.0, "prepare": 3.0, "train": 30.0, "memory": 4.0, "evaluate": 5.0}
    new = {"download": 1.0, "prepare": 2.0, "train": 20.0, "evaluate": 3.0}
    split = {"total_seconds": 20.0, "work_seconds": 16.0, "startup_seconds": 4.0}
    return [
        fake_run("baseline", 0, 40.0, old, train_seconds=25.0, dvc_start=2.0),
        fake_run("candidate", 0, 30.0, new, train_seconds=15.0, split=split),
        fake_run("candidate", 1, 24.0, new, train_seconds=16.0, split={**split, "work_seconds": 18.0}),
        fake_run("baseline", 1, 48.0, old, train_seconds=27.0, dvc_start=4.0),
        fake_run("baseline", 2, 60.0, {**old, "train": 33.0}, train_seconds=26.0, dvc_start=3.0),
        fake_run("candidate", 2, 27.0, new, split={**split, "work_seconds": 17.0}),
    ]


def test_summary_medians_and_ratio_of_totals() -> None:
    summary = startup_table.summarise(fake_runs())
    # The union of both checkouts' stages, in pipeline order.
    assert summary["stages"] == ["download", "prepare", "train", "memory", "evaluate"]
    baseline, candidate = summary["baseline"], summary["candidate"]
    assert baseline["runs"] == candidate["runs"] == 3
    assert baseline["total_seconds"] == {"median": 48.0, "min": 40.0, "max": 60.0, "runs": [40.0, 48.0, 60.0]}
    assert baseline["dvc_start_seconds"] == 3.0 and baseline["stage_seconds"]["train"] == 30.0
    assert baseline["stage_split"]["train"] is None and "memory" not in candidate["stage_seconds"]
    # Training seconds: the median of the runs that recorded it.
    assert baseline["train_seconds"] == 26.0 and candidate["train_seconds"] == 15.5
    assert candidate["stage_split"]["train"] == {"work_seconds": 17.0, "startup_seconds": 4.0}
    ratio = summary["ratio"]
    # Median of the candidate's totals (27) over the baseline's (48); min and max of each round's ratio.
    assert ratio["of_medians"] == pytest.approx(27.0 / 48.0)
    assert ratio["per_round"] == pytest.approx([30.0 / 40.0, 24.0 / 48.0, 27.0 / 60.0])
    assert (ratio["min"], ratio["max"]) == pytest.approx((27.0 / 60.0, 30.0 / 40.0))
    # Until both checkouts have a run there is no ratio.
    assert startup_table.summarise(fake_runs()[:1])["ratio"] is None


def fake_report(complete: bool = True) -> dict:
    """A report as benchmarks.startup writes it, around fake_runs()."""
    runs = fake_runs()
    return {
        "complete": complete,
        "created": "2026-12-01T09:00:00Z",
        "hardware": {"cpu_model": "AMD EPYC 7B13", "physical_cores": 2, "usable_cpus": 2},
        "settings": {"profile": "quick", "overrides": ["experiment=quick"], "rounds": 3},
        "checkouts": {
            "baseline": {"ref": "0e8defc", "commit": "0e8defc5938ef09391f7ecb6f0dd057eaba6a9d2"},
            "candidate": {"commit": "a45f4b3" + "0" * 33, "working_tree_changes": True},
        },
        "runs": runs,
        "noop": {"median": 0.91, "min": 0.88, "max": 0.95, "runs": [0.91, 0.88, 0.95]}
        | {"target_seconds": 2.0, "meets_target": True},
        "summary": startup_table.summarise(runs),
    }


def test_start_up_table_shows_both_checkouts_and_the_ratio() -> None:
    markdown = startup_table.format_report(fake_report())
    assert "| stage `train` | 30.0 | 20.0 | 17.0 / 4.0 |" in markdown
    assert "| stage `memory` | 4.0 | – | – |" in markdown
    assert "| total, median (min–max) | 48.0 (40.0–60.0) | 27.0 (24.0–30.0) | |" in markdown
    assert "| total, candidate / baseline | | 0.56 (0.45–0.75 over rounds) | |" in markdown
    assert "| training (`train_seconds`) | 26.0 | 15.5 | |" in markdown
    assert "Baseline `0e8defc` (0e8defc), candidate a45f4b3 + working tree changes" in markdown
    assert "3 rounds" in markdown and "2026-12-01" in markdown and "AMD EPYC 7B13" in markdown
    assert "0.91 s" in markdown and "meets the < 2 s target" in markdown
    assert "Partial" not in markdown and "Partial" in startup_table.format_report(fake_report(False))


PAGE = "# Performance\n\nIntro.\n\n## The measured numbers\n\nTables.\n\n## GPU\n\nThe GPU check.\n"


def test_doc_writer_adds_the_section_before_gpu_then_replaces_only_between_markers(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text(PAGE)
    startup_table.write_doc(doc, fake_report())
    text = doc.read_text()
    before, after = text.split("## Start-up: the quick profile from nothing\n\n")
    assert before == PAGE[: PAGE.index("## GPU")]
    assert after.startswith(startup_table.BEGIN_MARKER + "\n")
    assert after.endswith(f"{startup_table.END_MARKER}\n\n## GPU\n\nThe GPU check.\n")
    assert "| stage `train` | 30.0 | 20.0 |" in after
    # Regenerated: what was between the markers is replaced, everything else stays byte for byte.
    edited = text.replace("Intro.", "Intro, edited by hand.")
    begin = edited.index(startup_table.BEGIN_MARKER) + len(startup_table.BEGIN_MARKER)
    edited = edited[:begin] + "\nstale numbers\n" + edited[edited.index(startup_table.END_MARKER) :]
    doc.write_text(edited)
    report = fake_report(complete=False)
    startup_table.write_doc(doc, report)
    regenerated = doc.read_text()
    assert "stale numbers" not in regenerated and "Partial" in regenerated
    assert regenerated.count(startup_table.BEGIN_MARKER) == 1
    assert regenerated == edited.replace("\nstale numbers\n", f"\n{startup_table.format_report(report)}\n")


def test_doc_writer_without_markers_or_section_refuses(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text(PAGE)
    with pytest.raises(FashionCnnError, match="no benchmark markers"):
        table.fill_doc(doc, (table.BEGIN_MARKER, table.END_MARKER), "tables")
    assert doc.read_text() == PAGE
    # No "## GPU" heading: the section goes at the end.
    doc.write_text("# Performance\n")
    startup_table.write_doc(doc, fake_report())
    assert doc.read_text().startswith("# Performance\n\n## Start-up: the quick profile from nothing\n\n")


def test_table_only_regenerates_the_doc_from_the_json(tmp_path: Path, repo_root: Path, monkeypatch) -> None:
    report_file, doc = tmp_path / "startup.json", tmp_path / "performance.md"
    report_file.write_text(json.dumps(fake_report()))
    doc.write_text(PAGE)
    monkeypatch.chdir(repo_root)
    assert startup.main(["--table-only", "--output", str(report_file), "--doc", str(doc)]) == 0
    assert "| total, candidate / baseline | | 0.56" in doc.read_text()
    # No report: one error line naming the file, exit 1.
    assert startup.main(["--table-only", "--output", str(tmp_path / "none.json"), "--doc", str(doc)]) == 1


def test_train_seconds_only_from_a_metrics_file_the_run_rewrote(tmp_path: Path) -> None:
    metrics_file = tmp_path / "reports" / "train" / "metrics.json"
    metrics_file.parent.mkdir(parents=True)
    metrics_file.write_text(json.dumps({"train_seconds": 12.5}))
    since = time.time()
    # The checkout's committed file, copied into the clean copy before the run.
    os.utime(metrics_file, (since - 60, since - 60))
    assert startup.read_train_seconds(tmp_path, since) is None
    os.utime(metrics_file, (since + 1, since + 1))
    assert startup.read_train_seconds(tmp_path, since) == 12.5


def test_baseline_exported_from_git_without_touching_the_repository(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    repository.mkdir()
    identity = ["-c", "user.name=tests", "-c", "user.email=tests@fashion-cnn.invalid"]
    (repository / "params.yaml").write_text("seed: 1\n")
    for command in (["init", "-q"], ["add", "-A"], [*identity, "commit", "-qm", "one"]):
        subprocess.run(["git", *command], cwd=repository, check=True)
    first = startup.git(repository, "rev-parse", "HEAD")
    (repository / "params.yaml").write_text("seed: 2\n")
    subprocess.run(["git", *identity, "commit", "-qam", "two"], cwd=repository, check=True)

    assert startup.export_ref(repository, first[:7], tmp_path / "baseline") == first
    assert (tmp_path / "baseline" / "params.yaml").read_text() == "seed: 1\n"
    assert startup.git(repository, "worktree", "list").count("\n") == 0
    assert startup.candidate_identity(repository)["working_tree_changes"] is False
    (repository / "params.yaml").write_text("seed: 3\n")
    assert startup.candidate_identity(repository)["working_tree_changes"] is True
    with pytest.raises(FashionCnnError, match="not a commit"):
        startup.export_ref(repository, "no-such-ref", tmp_path / "other")


def test_the_committed_start_up_table_is_the_committed_report() -> None:
    root = Path(__file__).resolve().parents[1]
    report = json.loads((root / "reports" / "startup.json").read_text())
    assert report["complete"] and report["summary"]["ratio"]["of_medians"] > 0
    assert startup_table.format_report(report) in (root / "docs" / "performance.md").read_text()
