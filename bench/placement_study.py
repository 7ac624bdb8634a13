"""The placement study: `layerprof validate` run from bench/, same arguments.

Per task and step budget: a card profiled with that budget, single-layer LoRA probes and
every placement at k = L/4 (the card's candidate scores top-k, coupled greedy and cost-capped;
random-k, first/last/uniform/middle-k, gradient-norm, activation-norm, nfn; full LoRA), each
over 3 seeds, resumable. The runs behind docs/RESULTS.md:

    python bench/placement_study.py --task bundled --budgets 60 300 --out docs/study/bundled
    python bench/placement_study.py --task minilm --budgets 40 200 --lr 1e-3 --out docs/study/minilm
    python bench/study_summary.py     # the pre-registered rule and the goal tables over all tasks
"""
import sys

from layerprof.cli import main

if __name__ == "__main__":
    sys.exit(main(["validate", *sys.argv[1:]]))
