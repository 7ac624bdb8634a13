"""Study v2's runner: cards, placements and LoRA runs for one task, resumable at any run.

    python studies/v2/run.py --task smol-humaneval            # both budgets, 3 seeds, then the probes
    python studies/v2/run.py --task minilm-topics --no-probes

Everything follows studies/v2/PROTOCOL.md. Each finished run is appended to
studies/v2/data/runs.json at once (an atomic rewrite) and skipped when the runner starts again, so a
study can stop anywhere and resume. A seed fixes the adapter init (``torch.manual_seed`` before
``get_peft_model``) and the batch order (``Task.batches_for``); the eval set is fixed per task.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import placements as P  # noqa: E402
from tasks import TASKS  # noqa: E402

OUT = HERE / "data"
BUDGETS = (20, 80)
SEEDS = (0, 1, 2)
LR = 1e-3
K = {"smol": 7, "minilm": 2}    # SmolLM2: ⌊30/4⌋; MiniLM: 2 of 6 (v1's k; k = 1 makes every depth rule one layer)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Store:
    """runs.json: every finished run, appended as it ends; keyed so that a restart skips it."""

    def __init__(self, path: Path):
        self.path = path
        self.runs = json.loads(path.read_text())["runs"] if path.exists() else []
        self.keys = {r["key"] for r in self.runs}

    def add(self, run: dict) -> None:
        from layerprof.utils.fileio import atomic_write_text

        self.runs.append(run)
        self.keys.add(run["key"])
        atomic_write_text(self.path, json.dumps({"protocol": "studies/v2/PROTOCOL.md", "runs": self.runs},
                                                indent=1) + "\n")


def run_key(task: str, steps: int, seed: int, placement: dict) -> str:
    digest = hashlib.sha1("\n".join(placement["modules"]).encode()).hexdigest()[:12]
    return f"{task}|{steps}|{seed}|r{placement['r']}|{digest}"


def train(task, placement: dict, steps: int, seed: int) -> dict:
    """One LoRA fine-tune of a fresh model: r and α = 2r on the placement's modules, AdamW(lr, no decay)."""
    from peft import LoraConfig, get_peft_model

    from layerprof.study.lora import eval_loss

    model = task.model()
    torch.manual_seed(seed)
    config = LoraConfig(r=placement["r"], lora_alpha=2 * placement["r"], target_modules=placement["modules"],
                        lora_dropout=0.0)
    peft_model = get_peft_model(model, config)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    peft_model.train()
    wall, cpu, losses = [], [], []
    for batch in task.batches_for(seed, steps):
        t, c = time.perf_counter(), time.process_time()
        loss = peft_model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        losses.append(float(loss.detach()))
    after = eval_loss(peft_model, task.eval)
    skip = min(2, len(wall) - 1)  # the first steps allocate
    return {"eval_after": after, "trainable_params": sum(p.numel() for p in params),
            "step_seconds": statistics.median(wall[skip:]), "step_cpu_seconds": statistics.median(cpu[skip:]),
            "train_loss_first": losses[0], "train_loss_last": statistics.mean(losses[-5:])}


def card_for(name: str, task, out: Path):
    """The task's card (the product's defaults on the calibration batches), computed once and kept."""
    import layerprof as lp

    path = out / "card.json"
    if path.exists():
        return lp.LayerCard.load(path)
    t = time.perf_counter()
    card = lp.profile(task.model(), task.calibration, progress=False)
    card.meta["study_v2"] = {"task": name, "profiled_at": now(), "seconds": time.perf_counter() - t}
    card.save(path)
    return card


def placements_for(name: str, task, card, steps: int, out: Path) -> dict[str, dict]:
    """Every placement of the protocol at ``steps``, computed once and kept (placements_<steps>.json)."""
    path = out / f"placements_{steps}.json"
    if path.exists():
        return json.loads(path.read_text())
    k = K[name.split("-")[0]]
    found = P.all_placements(card, task.model(), task.calibration, k, steps)
    path.write_text(json.dumps(found, indent=1) + "\n")
    return found


def base_loss(task, out: Path) -> float:
    from layerprof.study.lora import eval_loss

    path = out / "base.json"
    if path.exists():
        return json.loads(path.read_text())["eval_before"]
    before = eval_loss(task.model(), task.eval)
    path.write_text(json.dumps({"eval_before": before}) + "\n")
    return before


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", required=True, choices=sorted(TASKS))
    ap.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--no-probes", action="store_true", help="skip the single-layer probes")
    ap.add_argument("--probes-only", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT, help="study folder (default: studies/v2/data)")
    args = ap.parse_args(argv)

    name = args.task
    out = args.out / name
    out.mkdir(parents=True, exist_ok=True)
    store = Store(args.out / "runs.json")
    task = TASKS[name]()
    card = card_for(name, task, out)
    before = base_loss(task, out)
    layers = [l.layer for l in card.layers]

    jobs = []  # (steps, seed, labels, placement), in the order the protocol runs them
    if not args.probes_only:
        for steps in args.budgets:
            found = placements_for(name, task, card, steps, out)
            for seed in args.seeds:
                distinct: dict[str, tuple[list[str], dict]] = {}
                for label, pl in found.items():
                    distinct.setdefault(run_key(name, steps, seed, pl), ([], pl))[0].append(label)
                jobs += [(steps, seed, labels, pl) for labels, pl in distinct.values()]
    if not args.no_probes:
        steps = min(args.budgets)
        for seed in args.seeds:
            jobs += [(steps, seed, [f"probe layer {l}"], P.blocks(card, [l])) for l in P.probe_layers(layers)]

    todo = [j for j in jobs if run_key(name, j[0], j[1], j[3]) not in store.keys]
    print(f"{name}: {len(jobs)} runs in the protocol, {len(jobs) - len(todo)} done, {len(todo)} to go", flush=True)
    for i, (steps, seed, labels, pl) in enumerate(todo, 1):
        t = time.perf_counter()
        run = train(task, pl, steps, seed)
        run.update({"key": run_key(name, steps, seed, pl), "task": name, "steps": steps, "seed": seed,
                    "labels": labels, "r": pl["r"], "layers": pl["layers"], "modules": len(pl["modules"]),
                    "eval_before": before, "gain": before - run["eval_after"], "lr": LR,
                    "threads": torch.get_num_threads(), "finished": now()})
        store.add(run)
        print(f"[{i}/{len(todo)}] {name} {steps} steps seed {seed} {labels[0]}{' +' if len(labels) > 1 else ''}: "
              f"gain {run['gain']:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
