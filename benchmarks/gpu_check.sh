#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU and this repository (about 8 minutes, most of it
# installing the CUDA wheels):
#   1. install the project with CUDA (`.[gpu]`, pinned by requirements.lock) into a venv;
#   2. run the benchmark's GPU profile: the seed's plain Keras code, the default config, and
#      mixed_float16 + steps_per_execution=9 with XLA off (deterministic ops) and on (nondeterministic:
#      Keras runs no XLA under deterministic ops);
#   3. train the default config for the full 10 epochs with the fast settings: mixed_float16,
#      steps_per_execution=9, XLA on with nondeterministic ops; then evaluate on the test set;
#   4. print the epoch times and the test accuracy (goal on one H100: under 60 s, at least 0.90).
# Everything runs in a temporary copy: the checkout's data/, reports/ and mlflow.db stay untouched.
# Usage: benchmarks/gpu_check.sh [VENV]   (default /tmp/fashion-cnn-gpu-venv; reused when present)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-/tmp/fashion-cnn-gpu-venv}
PYTHON_BOOTSTRAP=${PYTHON_BOOTSTRAP:-python3.11}
# Timed steps per benchmark run: GPU steps take milliseconds, so more than on the CPU.
BENCH_STEPS=${BENCH_STEPS:-320}
BENCH_REPEATS=${BENCH_REPEATS:-3}
WORK=$(mktemp -d /tmp/fashion-cnn-gpu-check-XXXXXX)
SECONDS=0
step() { printf '\n[%4d s] %s\n' "$SECONDS" "$*"; }

step "installing the project with CUDA into $VENV"
test -x "$VENV/bin/python" || "$PYTHON_BOOTSTRAP" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -c requirements.lock -e '.[gpu]'
export PATH="$VENV/bin:$PATH"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python - <<'EOF'
import tensorflow as tf

gpus = tf.config.list_physical_devices("GPU")
print(f"TensorFlow {tf.__version__} sees {gpus}")
if not gpus:
    raise SystemExit("error: TensorFlow sees no GPU (check the driver and the CUDA wheels)")
EOF

step "preparing the data in a copy of the project: $WORK"
cp -r params.yaml dvc.yaml conf "$WORK"/
export FASHION_CNN_ROOT="$WORK" MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db" PYTHONPATH="$PWD"
(cd "$WORK" && python -m fashion_cnn.download && python -m fashion_cnn.prepare)

step "benchmark, GPU profile ($BENCH_REPEATS rounds of $BENCH_STEPS timed steps)"
# A failed variant (XLA refusing deterministic ops) is recorded in the JSON; it does not stop the check.
python -m benchmarks.train_throughput --profile gpu --steps "$BENCH_STEPS" --warmup 64 \
    --repeats "$BENCH_REPEATS" --no-stage --no-pipeline --prepared-dir "$WORK/data/prepared" \
    --output "$WORK/benchmarks-gpu.json" || echo "(some benchmark runs failed; see above)"
JIT=on

step "training the default config for 10 epochs: mixed_float16, steps_per_execution=9, XLA on, nondeterministic"
(cd "$WORK" && python -m fashion_cnn.train train.device=gpu train.mixed_precision=mixed_float16 \
    train.steps_per_execution=9 train.jit_compile=on train.deterministic=false | tee "$WORK/train.log" \
    && python -m fashion_cnn.evaluate)
# What took effect, as the train stage read it back from the model once fit had started.
grep -q "running on GPU, XLA on, dtype policy mixed_float16 (output float32)" "$WORK/train.log" \
    || { echo "error: the run did not use GPU + XLA + mixed_float16 with a float32 output (see above)"; exit 1; }

step "summary"
python - "$WORK" "$JIT" <<'EOF'
import csv
import json
import sys
from pathlib import Path

work, jit = Path(sys.argv[1]), sys.argv[2]
rows = list(csv.DictReader(open(work / "reports/train/history.csv")))
seconds = [float(row["epoch_seconds"]) for row in rows]
accuracy = json.loads((work / "reports/metrics.json").read_text())["test"]["accuracy"]
print("epoch seconds:", ", ".join(f"{value:.1f}" for value in seconds))
print(f"10 epochs: {sum(seconds):.1f} s (goal < 60 s); test accuracy {accuracy:.4f} (goal >= 0.90); XLA {jit}")
report = json.loads((work / "benchmarks-gpu.json").read_text())
for name, entry in report["variants"].items():
    if "images_per_second" in entry:
        ratio = entry["ratio_vs_seed"]["median"]
        print(f"{name:<24} {entry['images_per_second']['median']:9.0f} images/s  {ratio:5.2f} x seed")
    else:
        print(f"{name:<24} failed")
EOF
echo "files: $WORK (benchmarks-gpu.json, reports/); total $SECONDS s (budget 480 s)"
