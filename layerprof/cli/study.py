"""``layerprof study``: the placement study's harness behind the fence (the one command that imports
``layerprof.study``)."""
from __future__ import annotations

import json
from pathlib import Path


def cmd_study(args) -> int:
    from ..study.protocol import Protocol, RunStore, run_protocol, study_cards, summarize
    from ..study.report import write_study
    from ..study.tasks import TASKS

    task = TASKS[args.task]()
    proto = Protocol(budgets=args.budgets, seeds=args.seeds, lr=args.lr, r=args.rank, lora_alpha=2 * args.rank,
                     k=args.k, random_draws=args.random_draws, probes=not args.no_probe,
                     placements=not args.no_placements, scores=args.scores, cost_cap=not args.no_cost_cap)
    out = Path(args.out)
    cards = study_cards(task, proto, out)
    store = RunStore(out / "runs.json")
    bar = None
    if not args.json:
        from tqdm.auto import tqdm

        # One step per LoRA training (probes and placements, × seeds × budgets): rate and ETA in runs.
        bar = tqdm(unit="run", desc="layerprof study", dynamic_ncols=True)

    def say(message: str) -> None:  # called before each training: the previous one is done
        if bar is not None:
            bar.update(1)
            bar.set_description(message)

    try:
        run_protocol(task, cards, proto, store, progress=say)
    finally:
        if bar is not None:
            bar.close()
    summary = summarize(cards, store, proto)
    paths = write_study(task.name, summary, cards, proto, out)
    if args.json:
        print(json.dumps(summary, indent=1, default=str))
    else:
        print(paths["markdown"].read_text())
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
