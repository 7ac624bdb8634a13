#!/usr/bin/env bash
# Study v2 in the protocol's order: each task's cards, placements and runs, then its probes.
# Resumable: finished runs in studies/v2/data/runs.json are skipped. Needs `make study-deps`.
set -euo pipefail
cd "$(dirname "$0")/../.."
for task in smol-humaneval smol-doc2func smol-prose minilm-topics minilm-code; do
  python studies/v2/run.py --task "$task" --no-probes
done
for task in smol-humaneval smol-doc2func smol-prose minilm-topics minilm-code; do
  python studies/v2/run.py --task "$task" --probes-only
done
