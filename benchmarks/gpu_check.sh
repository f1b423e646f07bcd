#!/usr/bin/env bash
# The GPU checks of the capture, as one prepared script for a lent GPU machine (not yet run on one;
# each part is time-boxed, 9 minutes in all, so the parts after a slow one still run):
#   1. the CUDA tests (the statistics' CUDA paths against the float64 references);
#   2. benchmarks/bench_capture.py on the real-size random-weight models (benchmarks/realsize.py):
#      time and peak GPU memory of generation without capture, statistics only, maps, sampled rows.
#
# The machine has PyTorch but not every package attnlens needs, and nothing can be downloaded
# there. Before the lease, on this machine (from the repository root):
#     bash benchmarks/gpu_wheels.sh          # wheels for Python 3.12 into .whl/ (git-ignored)
# then run, carrying .whl:   bash benchmarks/gpu_check.sh          (outputs go to $OUT, or build/gpu-check)
#
# GPU_CHECK_DRY=1 runs the same steps on the CPU at tiny sizes, without wheels, to check the
# script itself before spending device time on it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-build/gpu-check}"
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error DIFFUSERS_VERBOSITY=error
PY="${PYTHON:-python3}"

if [ "${GPU_CHECK_DRY:-0}" = 1 ]; then
    DEVICE=cpu DTYPE=float32
    SD=(--model tiny-animatediff --height 64 --width 64 --frames 8 --steps 2 --reps 1)
    COG=(--model tiny-cogvideox --height 64 --width 64 --frames 9 --steps 2 --reps 1)
else
    if ls .whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            || { echo "wheel install failed" | tee "$OUT_DIR/summary.txt"; exit 1; }
        export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
    fi
    DEVICE=cuda DTYPE=float16
    SD=(--model sd15-animatediff-random --height 512 --width 512 --frames 16 --steps 10 --reps 2)
    COG=(--model cogvideox-2b-random --height 480 --width 720 --frames 49 --steps 4 --reps 1)
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"

{
    echo "== $(date -u +%FT%TZ) $(uname -m)"
    "$PY" - <<'EOF'
import torch, diffusers, transformers, zarr, duckdb, xarray
print("torch", torch.__version__, "cuda", torch.version.cuda, "device",
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
print("diffusers", diffusers.__version__, "transformers", transformers.__version__, "zarr", zarr.__version__,
      "duckdb", duckdb.__version__, "xarray", xarray.__version__)
EOF
} 2>&1 | tee "$OUT_DIR/env.txt"

step() {  # step NAME SECONDS COMMAND...: time-boxed, output kept in $OUT_DIR/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit} s): $*"
    timeout "$limit" "$@" >"$OUT_DIR/$name.txt" 2>&1
    local rc=$?
    tail -n 25 "$OUT_DIR/$name.txt"
    echo "== $name: exit $rc"
    echo "$name exit $rc" >>"$OUT_DIR/summary.txt"
}

: >"$OUT_DIR/summary.txt"
step cuda-tests 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_stats.py -k cuda -rs
step bench-sd15 240 "$PY" benchmarks/bench_capture.py "${SD[@]}" --device "$DEVICE" --dtype "$DTYPE"
step bench-cogvideox 180 "$PY" benchmarks/bench_capture.py "${COG[@]}" --device "$DEVICE" --dtype "$DTYPE" \
    --modes none stats maps
cat "$OUT_DIR/summary.txt"
