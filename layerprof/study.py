"""Placement study: does the card's placement beat what a user would otherwise do? (DESIGN §5, §6)

For one task (a model and train/eval batches) it computes the card, then fine-tunes LoRA
with identical r, alpha, learning rate, steps, batches and seed for each placement at an
equal budget of k layers — card top-k, card under the cost budget of the cheapest k
layers, random-k (several seeds), first-k, last-k, gradient-norm, activation-norm and
nfn top-k — and full-layer LoRA; it records eval-loss improvement, trainable
parameters, median step time, peak memory and adapted modules. Single-layer probes
measure each layer's own gain, to check the card's predicted ranking (Spearman).
"""
from __future__ import annotations

import math
import random
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

ModelFactory = Callable[[], nn.Module]


@dataclass
class StudyConfig:
    """Identical LoRA training settings for every placement."""

    steps: int = 60          # optimizer steps per run
    r: int = 8               # LoRA rank
    lora_alpha: float = 16   # LoRA alpha
    lr: float = 2e-3         # AdamW learning rate
    seed: int = 0            # first seed for adapter init
    seeds: int = 1           # runs per placement (seed, seed+1, ...); gains reported as mean ± std
    random_seeds: int = 3    # random-k placements

    def __post_init__(self):
        if self.steps < 1 or self.r < 1 or self.lr <= 0 or self.random_seeds < 1 or self.seeds < 1:
            raise ValueError(f"invalid study settings: {self}")


@dataclass
class Task:
    """A model factory with train and eval batches (dicts of model kwargs with labels)."""

    name: str
    model: ModelFactory
    train: list
    eval: list
    calibration: list


@dataclass
class RunResult:
    placement: str
    layers: list
    eval_before: float
    eval_after: float
    gain: float
    trainable_params: int
    adapted_modules: int
    step_seconds: float
    peak_memory_bytes: int
    modelled_cost: float
    predicted_gain_fraction: float
    gain_std: float = 0.0
    gains: list = field(default_factory=list)
    gain_fraction_of_full: float | None = None
    step_time_fraction_of_full: float | None = None


def eval_loss(model: nn.Module, batches: Sequence[dict]) -> float:
    """Token-weighted mean loss (labels != -100) over ``batches``."""
    total, count = 0.0, 0
    was = model.training
    model.eval()
    with torch.no_grad():
        for b in batches:
            n = int((b["labels"][:, 1:] != -100).sum()) if b["labels"].dim() == 2 else b["labels"].numel()
            total += float(model(**b).loss) * n
            count += n
    model.train(was)
    return total / max(count, 1)


class _PeakMemory:
    """Peak device memory (CUDA) or resident memory sampled every ms (CPU) above the start."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.base = self.peak = _rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self._stop.set()
            self._thread.join()
            self.bytes = max(self.peak, _rss()) - self.base


def _rss() -> int:
    try:
        import resource

        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0


def train_lora(task: Task, modules: list[str], cfg: StudyConfig, kinds: dict[str, str] | None = None) -> dict:
    """Fine-tune LoRA on ``modules`` of a fresh model; return losses, params, step time, memory."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(cfg.seed)
    model = task.model()
    device = next(model.parameters()).device
    before = eval_loss(model, task.eval)
    conv1d = bool(kinds) and set(kinds.values()) == {"conv1d"}
    config = LoraConfig(r=cfg.r, lora_alpha=cfg.lora_alpha, target_modules=list(modules), lora_dropout=0.0,
                        fan_in_fan_out=conv1d)
    torch.manual_seed(cfg.seed)
    peft_model = get_peft_model(model, config)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    peft_model.train()
    times = []
    with _PeakMemory(device) as mem:
        for step in range(cfg.steps):
            batch = task.train[step % len(task.train)]
            t = time.perf_counter()
            loss = peft_model(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t)
    after = eval_loss(peft_model, task.eval)
    adapted = sum(1 for m in peft_model.modules() if hasattr(m, "lora_A") and "default" in m.lora_A)
    return {"eval_before": before, "eval_after": after, "gain": before - after,
            "trainable_params": sum(p.numel() for p in params), "adapted_modules": adapted,
            "step_seconds": statistics.median(times[min(2, len(times) - 1):]), "peak_memory_bytes": int(mem.bytes)}


def train_seeds(task: Task, modules: list[str], cfg: StudyConfig, kinds: dict[str, str] | None = None) -> dict:
    """``train_lora`` for each of cfg.seeds seeds: mean of every figure, plus the gains and their std."""
    runs = [train_lora(task, modules, replace(cfg, seed=cfg.seed + i), kinds) for i in range(cfg.seeds)]
    out = {k: statistics.mean(r[k] for r in runs) for k in runs[0]}
    out["trainable_params"] = runs[0]["trainable_params"]
    out["adapted_modules"] = runs[0]["adapted_modules"]
    out["peak_memory_bytes"] = max(r["peak_memory_bytes"] for r in runs)
    out["gains"] = [r["gain"] for r in runs]
    out["gain_std"] = statistics.stdev(out["gains"]) if len(runs) > 1 else 0.0
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties)."""
    if len(a) < 3:
        return None

    def ranks(v):
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        v = np.asarray(v, dtype=float)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            r[order[i:j + 1]] = (i + j) / 2.0
            i = j + 1
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def probe_layers(card, task: Task, cfg: StudyConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Single-layer LoRA per layer: measured gains and their Spearman with each score."""
    gains = {}
    for row in card.layers:
        if progress:
            progress(f"probe: layer {row.layer} alone")
        mods = [m.name for m in card.modules if m.layer == row.layer]
        gains[row.layer] = train_seeds(task, mods, cfg, {m.name: m.kind for m in card.modules})["gain"]
    measured = [gains[l.layer] for l in card.layers]
    from .finalize import SCORES

    candidate = lambda name: [SCORES[name](asdict(l)) for l in card.layers]  # noqa: E731 - the card's formulas
    scores = {"score (ρ²)": [l.score for l in card.layers],
              "ρ(r)²": candidate("resnorm2_rank"),
              "grad_norm²": [l.grad_norm ** 2 for l in card.layers],
              "act_norm": [l.act_norm for l in card.layers],
              "energy": candidate("energy"),
              "ρ²/noise_amp": candidate("resnorm2_over_noise"),
              "ρ(r)²/noise_amp": candidate("resnorm2_rank_over_noise"),
              "nfn": [l.nfn for l in card.layers]}
    return {"steps": cfg.steps, "r": cfg.r, "lr": cfg.lr, "measured_gain": {str(k): v for k, v in gains.items()},
            "spearman": {name: spearman(vals, measured) for name, vals in scores.items()}}


def placements(card, k: int, random_seeds: int) -> dict[str, list[int]]:
    """Layer sets compared at an equal budget of k layers (plus the card's cost-budget pick and full)."""
    layers = [l.layer for l in card.layers]
    out = {"card top-k": card.place(layers=k).layers}
    # The card's best gain within the modelled cost of the cheapest k layers (the top k).
    out["card cost-budget"] = card.place(budget=_cost_of(card, layers[-k:])).layers
    for s in range(random_seeds):
        out[f"random-k seed {s}"] = sorted(random.Random(1000 + s).sample(layers, k))
    out["first-k"] = layers[:k]
    out["last-k"] = layers[-k:]
    out["grad-norm top-k"] = card.place(layers=k, by="grad_norm").layers
    out["act-norm top-k"] = card.place(layers=k, by="act_norm").layers
    out["nfn top-k"] = card.place(layers=k, by="nfn").layers
    out["full"] = layers
    return out


def _cost_of(card, layers: list[int]) -> float:
    from .placement import card_cost_model

    return card_cost_model(card).cost(layers, card.rank).fraction


@dataclass
class StudyResult:
    task: str
    k: int
    config: dict
    runs: list = field(default_factory=list)
    probe: dict | None = None

    def to_dict(self) -> dict:
        return {"task": self.task, "k": self.k, "config": self.config, "runs": [asdict(r) for r in self.runs],
                "probe": self.probe}


def study_runs(card, k: int | None, cfg: StudyConfig, probe: bool) -> int:
    """How many LoRA trainings ``run_study`` does (placements plus probes; each × cfg.seeds)."""
    n = len(placements(card, k or card.default_layers(), cfg.random_seeds)) + (len(card.layers) if probe else 0)
    return n * cfg.seeds


def run_study(task: Task, card, *, k: int | None = None, cfg: StudyConfig | None = None, probe: bool = True,
              progress: Callable[[str], None] | None = None) -> StudyResult:
    """Fine-tune every placement of ``placements`` (and the probes) and collect the results.

    ``progress(message)`` is called before each placement or probe (cfg.seeds trainings each).
    """
    cfg = cfg or StudyConfig()
    k = k or card.default_layers()
    kinds = {m.name: m.kind for m in card.modules}
    result = StudyResult(task.name, k, asdict(cfg))
    total = sum(card.layer(l).score for l in [x.layer for x in card.layers])
    for name, layers in placements(card, k, cfg.random_seeds).items():
        if progress:
            progress(f"LoRA on {name}: layers {layers}")
        mods = [m.name for m in card.modules if m.layer in layers]
        out = train_seeds(task, mods, cfg, kinds)
        result.runs.append(RunResult(
            placement=name, layers=layers, modelled_cost=_cost_of(card, layers),
            predicted_gain_fraction=sum(card.layer(l).score for l in layers) / total if total else math.nan, **out))
    full = next(r for r in result.runs if r.placement == "full")
    for r in result.runs:
        # A share of full LoRA's gain means something only when full LoRA improved at all.
        r.gain_fraction_of_full = r.gain / full.gain if full.gain > 0 else None
        r.step_time_fraction_of_full = r.step_seconds / full.step_seconds if full.step_seconds else None
    if probe:
        result.probe = probe_layers(card, task, cfg, progress)
    return result


def write_report(result: StudyResult, card, out: Path) -> dict[str, Path]:
    """Markdown table, CSV and plots (gain vs cost with the Pareto front; predicted vs measured)."""
    import csv

    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "study.csv", "markdown": out / "study.md"}
    rows = [asdict(r) for r in result.runs]
    with paths["csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [f"# Placement study — {result.task}", "",
             f"k = {result.k} layers of {len(card.layers)}; LoRA r = {result.config['r']}, alpha = "
             f"{result.config['lora_alpha']}, lr = {result.config['lr']}, {result.config['steps']} steps, seed "
             f"{result.config['seed']}..{result.config['seed'] + result.config['seeds'] - 1} (gain = mean ± std over "
             f"seeds); identical batches for every run. Gain = eval-loss improvement (nats/token). Peak memory on "
             f"a CPU is resident-set growth, which the allocator's cache hides after the first run: read it on a GPU.",
             "", "| placement | layers | eval gain | % of full | step time % of full | modelled cost | "
             "predicted gain share | trainable params | adapted modules | peak mem MiB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result.runs:
        lines.append(f"| {r.placement} | {r.layers} | {r.gain:.4f} ± {r.gain_std:.4f} | {_pct(r.gain_fraction_of_full)} | "
                     f"{_pct(r.step_time_fraction_of_full)} | {r.modelled_cost:.2f} | {r.predicted_gain_fraction:.2f} | "
                     f"{r.trainable_params:,} | {r.adapted_modules} | {r.peak_memory_bytes / 2 ** 20:.0f} |")
    if result.probe:
        single = {int(k): v for k, v in result.probe["measured_gain"].items()}
        lines += ["", "## Additivity", "",
                  "Measured gain of each multi-layer placement against the sum of its layers' single-layer gains"
                  + (" and the coupled quadratic model's joint/additive ratio" if card.meta.get("coupling") else "")
                  + ".", "", "| placement | layers | measured | Σ single-layer | measured / Σ |"
                  + (" coupled/additive predicted |" if card.meta.get("coupling") else ""),
                  "|---|---|---:|---:|---:|" + ("---:|" if card.meta.get("coupling") else "")]
        for r in result.runs:
            if len(r.layers) < 2:
                continue
            total_single = sum(single[l] for l in r.layers)
            row = (f"| {r.placement} | {r.layers} | {r.gain:.4f} | {total_single:.4f} | "
                   f"{r.gain / total_single if total_single else float('nan'):.2f} |")
            if card.meta.get("coupling"):
                row += f" {_coupled_ratio(card, r.layers):.2f} |"
            lines.append(row)
    rand = [r.gain for r in result.runs if r.placement.startswith("random")]
    if rand:
        lines += ["", f"random-k: mean gain {statistics.mean(rand):.4f} (min {min(rand):.4f}, max {max(rand):.4f})."]
    if result.probe:
        lines += ["", "## Single-layer probes", "", "| layer | predicted ρ² | measured gain |", "|---:|---:|---:|"]
        for l in card.layers:
            lines.append(f"| {l.layer} | {l.score:.4g} | {result.probe['measured_gain'][str(l.layer)]:.4f} |")
        lines += ["", "Spearman(score, measured single-layer gain): " + ", ".join(
            f"{k} {v:+.2f}" if v is not None else f"{k} n/a" for k, v in result.probe["spearman"].items())]
    paths["markdown"].write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        paths.update(_plots(result, card, out))
    except ImportError:
        pass  # matplotlib is optional; the table and CSV carry the same numbers
    return paths


def _coupled_ratio(card, layers: list[int]) -> float:
    """Coupled joint gain / additive gain predicted for ``layers`` (1 = no interaction)."""
    from .coupling import joint_gain

    c = card.meta["coupling"]
    idx = [c["layers"].index(l) for l in layers]
    b = [card.layer(l).score for l in layers]
    rho = np.asarray(c["rho"])[np.ix_(idx, idx)]
    return joint_gain(b, rho) / (0.5 * sum(b)) if sum(b) else float("nan")


def _pct(x):
    return "–" if x is None else f"{x:.0%}"


def _plots(result: StudyResult, card, out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in result.runs:
        ax.scatter(r.step_time_fraction_of_full, r.gain_fraction_of_full, s=30)
        ax.annotate(r.placement, (r.step_time_fraction_of_full, r.gain_fraction_of_full), fontsize=7)
    front = card.place(layers=result.k).front
    ax.plot([p["cost"] for p in front], [p["gain_fraction"] for p in front], "k--", lw=1,
            label="card's predicted Pareto front (modelled cost, predicted gain)")
    ax.set_xlabel("step time (measured) or modelled cost, fraction of full LoRA")
    ax.set_ylabel("eval gain, fraction of full LoRA")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths["gain_vs_cost"] = out / "gain_vs_cost.png"
    fig.savefig(paths["gain_vs_cost"], dpi=120)
    plt.close(fig)
    if result.probe:
        fig, ax = plt.subplots(figsize=(5, 4))
        xs = [l.score for l in card.layers]
        ys = [result.probe["measured_gain"][str(l.layer)] for l in card.layers]
        ax.scatter(xs, ys)
        for l, x, y in zip(card.layers, xs, ys):
            ax.annotate(str(l.layer), (x, y))
        ax.set_xlabel("predicted (score = ρ²)")
        ax.set_ylabel("measured single-layer eval gain")
        fig.tight_layout()
        paths["predicted_vs_measured"] = out / "predicted_vs_measured.png"
        fig.savefig(paths["predicted_vs_measured"], dpi=120)
        plt.close(fig)
    return paths
