#!/usr/bin/env bash
# One call on a CUDA machine (under ~8 minutes): build the extension with its CUDA kernels,
# run the GPU tests (cuda and triton backends compiled for the device), the benchmark suite's
# GPU-marked benchmarks (benchmarks/, saved under benchmarks/runs/ like every run, wall clock), then
# the GPU figures of bench_gpu.py; copy the results to $OUT when the device tool provides one. Its benchmark is
# dry-run on the CPU at tiny shapes in CI (tests/test_gpu_check_dry_run.py), so device time is not
# spent on a Python error.
#
# Here first: `bash bench/gpu_wheels.sh` (the packages the device image lacks, into .whl/); then the
# device tool's run with carry [".whl"] and the command `bash bench/gpu_check.sh`.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${OUT:-}" ]; then exec > >(tee "$OUT/gpu_check.log") 2>&1; fi  # the whole log comes back, not only its tail
export LAYERPROF_TEST_TRITON_GPU=1 TRITON_INTERPRET=0 HF_HUB_OFFLINE=1
python() { python3 "$@"; }  # the device image's Python is python3 (there may be no `python`)
if ls .whl/*.whl >/dev/null 2>&1 && ! python -c "import pydantic" 2>/dev/null; then
  python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python -c "import pydantic" || echo "WARNING: pydantic missing: run bench/gpu_wheels.sh here and carry .whl"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
echo "== build"; time python -m pip install --no-build-isolation --no-deps -e . -q 2>&1 | tail -5
python -m layerprof.cli doctor
echo "== GPU tests"; timeout 200 python -m pytest -q tests/test_gpu.py tests/test_columns.py 2>&1 | tail -5
echo "== benchmark suite (GPU)"; LAYERPROF_BENCH_CLOCK=wall timeout 150 python -m pytest benchmarks -m gpu -q \
  --benchmark-only --benchmark-autosave --benchmark-storage=file://benchmarks/runs -p no:cacheprovider 2>&1 | tail -15
python benchmarks/tables.py 2>&1 | tail -20
echo "== bench"; (cd bench && timeout 300 python3 bench_gpu.py)
if [ -n "${OUT:-}" ]; then cp bench/results.csv "$OUT/" 2>/dev/null; cp -r benchmarks/runs "$OUT/" 2>/dev/null; fi
