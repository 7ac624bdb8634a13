"""The placement study (issue 4): `layerprof validate` run from bench/, same arguments.

Fine-tunes LoRA for every placement at an equal budget (card top-k, card cost-budget,
random-k, first-k, last-k, gradient-norm, activation-norm, nfn, full), side by side in
one run with identical batches, seeds and hyper-parameters, and writes study.md/csv/json,
card.json and plots. The runs behind docs/RESULTS.md:

    python bench/placement_study.py --steps 60 --seeds 3 --out docs/study_bundled
    python bench/placement_study.py --task code --steps 60 --seeds 2 --out docs/study_code
    python bench/placement_study.py --task minilm --steps 40 --seeds 2 --lr 1e-3 --out docs/study_minilm_v2
"""
import sys

from layerprof.cli import main

if __name__ == "__main__":
    sys.exit(main(["validate", *sys.argv[1:]]))
