#!/usr/bin/env bash
# The GPU check (about 8 minutes, mostly installing the CUDA wheels), in a temporary copy of the project:
# install `.[gpu]` into a venv, run the benchmark's GPU profile, train the default config for 10 epochs
# with mixed_float16, steps_per_execution=9 and XLA (nondeterministic ops), evaluate, and fail unless the
# run read back GPU + XLA + mixed_float16. Goal on one H100: under 60 s for 10 epochs, accuracy >= 0.90.
# Usage: benchmarks/gpu_check.sh [VENV]   (default /tmp/fashion-cnn-gpu-venv; reused when present)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-/tmp/fashion-cnn-gpu-venv}
BENCH_STEPS=${BENCH_STEPS:-320}  # GPU steps take milliseconds: more timed steps than on the CPU
BENCH_REPEATS=${BENCH_REPEATS:-3}
WORK=$(mktemp -d /tmp/fashion-cnn-gpu-check-XXXXXX)
SECONDS=0
step() { printf '\n[%4d s] %s\n' "$SECONDS" "$*"; }

step "installing the project with CUDA into $VENV"
test -x "$VENV/bin/python" || "${PYTHON_BOOTSTRAP:-python3.11}" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -c requirements.lock -e '.[gpu]'
export PATH="$VENV/bin:$PATH"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c 'import tensorflow as tf; gpus = tf.config.list_physical_devices("GPU"); print(tf.__version__, gpus)
if not gpus: raise SystemExit("error: TensorFlow sees no GPU (check the driver and the CUDA wheels)")'

step "preparing the data in a copy of the project: $WORK"
cp -r params.yaml dvc.yaml conf "$WORK"/
export FASHION_CNN_ROOT="$WORK" MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db" PYTHONPATH="$PWD"
(cd "$WORK" && python -m fashion_cnn.stages.download && python -m fashion_cnn.stages.prepare)

step "benchmark, GPU profile ($BENCH_REPEATS rounds of $BENCH_STEPS timed steps)"
# A failed variant is recorded in the JSON; it does not stop the check.
python -m benchmarks.train_throughput --profile gpu --steps "$BENCH_STEPS" --warmup 64 \
    --repeats "$BENCH_REPEATS" --no-stage --no-pipeline --prepared-dir "$WORK/data/prepared" \
    --output "$WORK/benchmarks-gpu.json" || echo "(some benchmark runs failed; see above)"

step "training the default config for 10 epochs: mixed_float16, steps_per_execution=9, XLA on, nondeterministic"
(cd "$WORK" && python -m fashion_cnn.stages.train train.device=gpu train.mixed_precision=mixed_float16 \
    train.steps_per_execution=9 train.jit_compile=on train.deterministic=false | tee "$WORK/train.log" \
    && python -m fashion_cnn.stages.evaluate)
# What took effect, as the train stage read it back from the model once fit had started.
grep -q "running on GPU, XLA on, dtype policy mixed_float16 (output float32)" "$WORK/train.log" \
    || { echo "error: the run did not use GPU + XLA + mixed_float16 with a float32 output (see above)"; exit 1; }

step "summary"
python -m benchmarks.table --report "$WORK/benchmarks-gpu.json" --print || echo "(no benchmark report)"
python - "$WORK" <<'EOF'
import csv, json, sys

work = sys.argv[1]
seconds = [float(row["epoch_seconds"]) for row in csv.DictReader(open(f"{work}/reports/train/history.csv"))]
accuracy = json.load(open(f"{work}/reports/metrics.json"))["test"]["accuracy"]
print("epoch seconds:", ", ".join(f"{value:.1f}" for value in seconds))
print(f"10 epochs: {sum(seconds):.1f} s (goal < 60 s); test accuracy {accuracy:.4f} (goal >= 0.90)")
EOF
echo "files: $WORK (benchmarks-gpu.json, reports/); total $SECONDS s (budget 480 s)"
