"""Idle step-time check of the cost-aware placement: its LoRA step against full LoRA's, side by side.

For each study task, the card's cost-capped plan (``card.place(budget=0.6)``, the modelled cost
at most 60% of full-layer LoRA) and full-layer LoRA are built as two PEFT models on the same
batches; their training steps (forward, backward, AdamW) alternate, and the median process
CPU time per step of each gives the ratio. One thread (the steadiest measure on a shared
machine). The plan's measured gain share comes from the study (``studies/v1/data/study/TASK/study.json``).

    OMP_NUM_THREADS=1 python studies/v1/scripts/bench_step_time.py            # the decoder tasks
    OMP_NUM_THREADS=1 python studies/v1/scripts/bench_step_time.py --steps 40 --tasks bundled deep
    OMP_NUM_THREADS=1 python studies/v1/scripts/bench_step_time.py --steps 60 --tasks all   # every study task
    OMP_NUM_THREADS=1 python studies/v1/scripts/bench_step_time.py --steps 60 --tasks all --measured-cost --by energy
    OMP_NUM_THREADS=1 python studies/v1/scripts/bench_step_time.py --steps 60 --tasks all --measured-cost   # today's default score

``--measured-cost`` first times LoRA steps of five placement shapes on this machine
(``layerprof.measure_step_cost``) and places with the fitted cost model. A plan the study never
trained is trained here with the study's own settings and seeds (cached in the study's
``runs.json``, as ``layerprof study`` caches), and its gain is read against the study's full LoRA.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import layerprof as lp

ROOT = Path(__file__).resolve().parent.parent


def short_budget_card(name: str):
    """The path of a study task's short-budget card (the 60-step one; MiniLM's is 40)."""
    return sorted((ROOT / "data" / "study" / name).glob("card_*steps.json"),
                  key=lambda p: int(p.stem.split("_")[1].removesuffix("steps")))[0]


def _peft(task, modules, kinds, r=8):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    conv1d = set(kinds.values()) == {"conv1d"}
    model = get_peft_model(task.model(), LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(modules),
                                                    fan_in_fan_out=conv1d))
    model.train()
    return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)


def timed_steps(task, runs: dict, steps: int, warmup: int = 3) -> dict[str, list[float]]:
    """Process seconds of each LoRA step of every run in ``runs`` (name → (model, optimizer)), the runs
    alternating step by step on the task's training batches, after ``warmup`` untimed steps."""
    times = {k: [] for k in runs}
    for step in range(steps + warmup):
        batch = task.train[step % len(task.train)]
        for k, (model, opt) in runs.items():
            t = time.process_time()
            loss = model(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step >= warmup:
                times[k].append(time.process_time() - t)
    return times


def main(argv=None) -> None:
    from layerprof.pipeline.benchmark import machine
    from layerprof.card.scores import DEFAULT_SCORE
    from layerprof.study.protocol import rescore, with_attention
    from layerprof.study.tasks import TASKS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["bundled", "code", "deep", "deep-code", "docstrings"],
                    help="study tasks (any with a card in studies/v1/data/study/TASK); --tasks all for every one")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--budget", type=float, default=0.6)
    ap.add_argument("--by", default="score", help="layer column to place by (default: the score, see --score)")
    ap.add_argument("--score", default=None,
                    help="rescore each stored card with this score before placing (default: the library's "
                         f"default score); 'stored' keeps the score the card was saved with")
    ap.add_argument("--measured-cost", action="store_true",
                    help="place with a cost model fitted to LoRA steps timed here (layerprof.measure_step_cost)")
    ap.add_argument("--calibration-steps", type=int, default=10, help="timed steps per shape with --measured-cost")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"machine: {machine()}\n")
    print("| task | cost-capped layers | modelled cost | measured step time / full LoRA | its gain (share of full, study) |"
          " both? |")
    print("|---|---|---:|---:|---:|---|")
    names = sorted(p.name for p in (ROOT / "data" / "study").iterdir() if p.name in TASKS) if args.tasks == ["all"] \
        else args.tasks
    for name in names:
        path = short_budget_card(name)  # its attention term filled below for older cards
        task = TASKS[name]()
        card = with_attention(lp.LayerCard.load(path), task)
        if args.score != "stored":
            # Study cards keep the score of the version that made them; place by today's default.
            card = rescore(card, args.score or DEFAULT_SCORE)
        flop_plan = card.place(budget=args.budget, by=args.by) if args.measured_cost else None
        if args.measured_cost:
            card = lp.measure_step_cost(task.model(), task.calibration, card, steps=args.calibration_steps,
                                        clock=time.process_time)
        plan = card.place(budget=args.budget, by=args.by)
        kinds = {m.name: m.kind for m in card.modules}
        runs = {"full": _peft(task, [m.name for m in card.modules if m.layer is not None], kinds),
                "plan": _peft(task, plan.modules, kinds)}
        times = timed_steps(task, runs, args.steps)
        ratio = statistics.median(times["plan"]) / statistics.median(times["full"])
        share = plan_share(name, path, task, card, plan, kinds)
        both = "–" if share is None else ("**yes**" if share >= 0.9 and ratio <= args.budget else "no")
        flop = "" if not args.measured_cost else f" (FLOP model: {flop_plan.layers} at {flop_plan.cost:.1%})"
        print(f"| {name} | {plan.layers}{flop} | {plan.cost:.1%} | {ratio:.1%} | "
              f"{'–' if share is None else format(share, '.0%')} | {both} |", flush=True)


def plan_share(name: str, card_path: Path, task, card, plan, kinds) -> float | None:
    """The plan's mean gain as a share of full LoRA's at the card's budget: from the study's placements,
    or trained here (the study's settings and seeds, cached in its runs.json) when the study has no run of
    it. None where full LoRA lost (no reference)."""
    from layerprof.study.protocol import Protocol, RunStore, measured_gains, train_placement

    folder = ROOT / "data" / "study" / name
    study = json.loads((folder / "study.json").read_text())
    steps = int(card_path.stem.split("_")[1].removesuffix("steps"))
    placements = study["budgets"][str(steps)]["placements"]
    full = placements.get("full", {}).get("mean")
    if full is None or full <= 0:
        return None
    gains = measured_gains(placements, plan.layers) or train_placement(
        task, card, plan.layers, steps, Protocol(**study["protocol"]), RunStore(folder / "runs.json"), kinds)
    return statistics.mean(gains) / full


if __name__ == "__main__":
    main()
