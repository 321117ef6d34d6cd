#!/usr/bin/env bash
# The full-size GPU benchmark as one command (bench/README.md, "GPU, full size"):
# parity/bare and attribute/bare at 1024x1024 for Turbo (8 steps) and base (30 steps),
# metrics share, peak GPU memory, the out-of-memory fallback exercised for real and the
# GPU noise floor (SDPA math vs default kernel, TF32 off vs on, reduced-precision
# reductions default vs flipped, and parity's alternate path with all three).
#
#   bash bench/gpu.sh [OUT]          on a CUDA machine (about 6 minutes on one H200)
#   bash bench/gpu.sh --tiny [OUT]   the same code path at toy size on CPU, as a check
#
# Writes OUT/full_size.log and OUT/full_size.json (default OUT: bench-out). Needs
# python3 with torch (PYTHON=... for another interpreter); parity runs from this
# checkout. The wheels in $PARITY_WHEELS (default bench/wheels; fetch them with
# bench/fetch_wheels.sh where there is a network) are installed into a private folder
# first: diffusers and pydantic, which such a machine may lack, and the pinned
# transformers, tokenizers and peft.
set -euo pipefail
cd "$(dirname "$0")/.."

scale=full
if [ "${1:-}" = "--tiny" ]; then
  scale=tiny
  shift
fi
out=${1:-bench-out}
python=${PYTHON:-python3}
wheels=${PARITY_WHEELS:-bench/wheels}
mkdir -p "$out"
site=""
work=$(mktemp -d "${TMPDIR:-/tmp}/parity-bench-XXXXXX")
trap 'rm -rf "$work" ${site:+"$site"}' EXIT

# The pinned libraries of bench/gpu-wheels.txt, where their wheels were brought along,
# go first on the path; the machine's own stack serves for the rest.
if compgen -G "$wheels/*.whl" >/dev/null; then
  site=$(mktemp -d "${TMPDIR:-/tmp}/parity-site-XXXXXX")
  "$python" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check \
    --target "$site" "$wheels"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$python" -c "import diffusers, pydantic" 2>/dev/null; then
  echo "gpu.sh: diffusers or pydantic is not installed and $wheels holds no wheels of them;" \
    "run 'bash bench/fetch_wheels.sh' where there is a network and bring $wheels along" >&2
  exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [ "$scale" = full ]; then
  args=(--full-size --device cuda)
else
  args=(--full-size --device cpu --scale tiny)
fi
"$python" -m bench "${args[@]}" --repeat 1 --noise-floor --oom-fallback \
  --work "$work" --json "$out/full_size.json" 2>&1 | tee "$out/full_size.log"
