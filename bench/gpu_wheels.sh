#!/usr/bin/env bash
# Run HERE (a machine with the package registry) before bench/gpu_check.sh goes to the device
# machine: that image has torch, transformers, peft, scipy, triton and pytest but not pydantic
# (the card schema's validator) nor pytest-benchmark (the benchmark suite), and nothing can be fetched there. This saves the missing
# wheels, for its Python (3.12, x86-64 Linux), in .whl/ (git-ignored); the device call carries
# that folder and gpu_check.sh installs from it before anything else.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2 \
  pytest-benchmark==5.2.3 py-cpuinfo==9.0.0
ls .whl
