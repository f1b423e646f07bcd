#!/usr/bin/env bash
# Wheels for the GPU machine (Python 3.12, x86-64, no network there) of the packages attnlens needs
# that its image lacks, at the versions installed here (those the test suite passed with), into
# .whl/ (kept out of git through .git/info/exclude). See benchmarks/gpu_check.sh. On 2026-12-05
# they took 42 MB; with the tracked files (17 MB) that is within the 64 MiB a device call carries.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
mkdir -p .git/info .whl
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >>.git/info/exclude
# the image has torch, transformers, numpy, pandas, pyarrow, pillow, imageio, tqdm, psutil, pytest;
# importlib_metadata is what diffusers asks for beyond them
pins=$("$PY" - <<'EOF'
from importlib.metadata import version
names = ["diffusers", "zarr", "numcodecs", "donfig", "google-crc32c", "duckdb", "xarray", "ftfy", "wcwidth"]
print(" ".join(f"{n}=={version(n)}" for n in names))
EOF
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $pins importlib_metadata
du -sh .whl
