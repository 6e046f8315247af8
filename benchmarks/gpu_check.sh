#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU and TensorFlow with CUDA (about 10 minutes, most of it
# installing the CUDA wheels). In a temporary copy of the project it:
#   1. installs `.[gpu]` into a venv and fails unless TensorFlow sees a GPU;
#   2. runs the whole pipeline with the large-batch preset, `experiment=gpu` (conf/experiment/gpu.yaml:
#      batch 512, validation batch 1,000, XLA on, nondeterministic ops, mixed precision auto);
#   3. checks what took effect, as the train stage read it back from the model once fit had started
#      (GPU, model.jit_compile true, dtype policy mixed_float16, float32 output layer), and the test
#      accuracy (>= large_batch_accuracy of conf/race.yaml, 0.905, the seed's; MIN_ACCURACY overrides it;
#      the preset reaches it on a CPU, see reports/race.json);
#   4. optionally (GPU_CHECK_BENCH=1) the benchmark's GPU profile.
# It exits non-zero on any failed check and states its real duration.
# Usage: benchmarks/gpu_check.sh [VENV]   (default /tmp/fashion-cnn-gpu-venv; reused when present)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-/tmp/fashion-cnn-gpu-venv}
WORK=$(mktemp -d /tmp/fashion-cnn-gpu-check-XXXXXX)
SECONDS=0
FAILED=0
trap 'status=$?; [ $status = 0 ] || echo "gpu check: FAILED (exit $status) after $SECONDS s"' EXIT
step() { printf '\n[%4d s] %s\n' "$SECONDS" "$*"; }
check() {  # check "what" command...: prints ok/FAILED, remembers a failure
    local what=$1; shift
    if "$@"; then echo "ok      $what"; else echo "FAILED  $what"; FAILED=1; fi
}

step "installing the project with CUDA into $VENV"
test -x "$VENV/bin/python" || "${PYTHON_BOOTSTRAP:-python3.11}" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -c requirements.lock -e '.[gpu]'
export PATH="$VENV/bin:$PATH"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    || { echo "error: nvidia-smi found no GPU (after $SECONDS s)"; exit 1; }
python -c 'import tensorflow as tf; gpus = tf.config.list_physical_devices("GPU"); print(tf.__version__, gpus)
if not gpus: raise SystemExit("error: TensorFlow sees no GPU (check the driver and the CUDA wheels)")'

step "the whole pipeline with experiment=gpu in a copy of the project: $WORK"
cp -r params.yaml dvc.yaml conf src .dvc "$WORK"/
export MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db" PYTHONPATH="$WORK/src:$PWD"
(cd "$WORK" && git init -q && python - <<'PY'
from pathlib import Path
from dvc.utils.hydra import compose_and_dump
# The composition `dvc exp run -S experiment=gpu` does.
overrides = ["experiment=gpu", "train.device=gpu"]
compose_and_dump(Path("params.yaml"), str(Path("conf").resolve()), None, "config", "", overrides)
PY
)
TRAIN_STARTED=$SECONDS
(cd "$WORK" && dvc repro 2>&1 | tee "$WORK/repro.log")
PIPELINE_SECONDS=$((SECONDS - TRAIN_STARTED))

step "checks"
python -m benchmarks.gpu_checks "$WORK" ${MIN_ACCURACY:+--min-accuracy "$MIN_ACCURACY"} || FAILED=1

if [ "${GPU_CHECK_BENCH:-0}" = 1 ]; then
    step "benchmark, GPU profile"
    python -m benchmarks.train_throughput --profile gpu --steps 320 --warmup 64 --repeats 3 --no-stage \
        --no-pipeline --prepared-dir "$WORK/data/prepared" --output "$WORK/benchmarks-gpu.json" \
        && python -m benchmarks.table --report "$WORK/benchmarks-gpu.json" --print \
        || { echo "FAILED  benchmark"; FAILED=1; }
fi

echo
echo "files: $WORK; pipeline $PIPELINE_SECONDS s; total $SECONDS s (the real duration of this check)"
if [ "$FAILED" != 0 ]; then echo "gpu check: FAILED"; exit 1; fi
echo "gpu check: passed"
