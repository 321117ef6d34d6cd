#!/usr/bin/env bash
# Download the wheels bench/gpu.sh installs on a GPU machine that has torch but no network
# (and no diffusers): the pinned versions of bench/gpu-wheels.txt, for its Python.
#
#   bash bench/fetch_wheels.sh [DIR] [PYTHON_VERSION]    (defaults: bench/wheels, 3.12)
#
# Copy DIR along with the checkout (bench/wheels is ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-bench/wheels}
pyver=${2:-3.12}
python3 -m pip download -q --no-deps --only-binary=:all: --implementation cp \
  --python-version "$pyver" --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$dir" -r bench/gpu-wheels.txt
ls -l "$dir"
