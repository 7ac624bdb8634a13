"""The placement study's protocol: probes and placements over seeds and budgets, resumable.

Rule 3: every comparison is a mean over ≥ 3 seeds (adapter init seeded with
``torch.manual_seed`` before ``get_peft_model``; identical batch order), with paired
differences and bootstrap intervals. Rule 2: every score is tested at ≥ 2 step budgets,
the card for each budget computed with that budget. Runs are keyed by (budget, layer set,
seed) and appended to one JSON file as they finish, so an interrupted study resumes where
it stopped and a layer set shared by several placements is trained once.

``run_protocol`` does the trainings; ``summarize`` turns the file and the cards into the
tables of studies/v1/notebook.md (``layerprof.study.report`` writes them).
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..utils.fileio import atomic_write_text
from .lora import StudyConfig, Task, layer_candidates, train_lora
from .statistics import bootstrap_spearman, seed_spread

# The card's candidate scores placed top-k (and coupled greedy) in the study: label -> SCORES name.
PLACEMENT_SCORES = {"card ρ²": "resnorm2", "card ρ²×": "resnorm2_x", "card ‖C‖²×": "grad_norm2_x",
                    "card simulated": "sim_gain", "card warm-up LCA": "lca_gain", "card energy": "energy",
                    "card ρ(r)²/noise": "resnorm2_rank_over_noise", "card ρ(r)²×/noise": "resnorm2_rank_x_over_noise"}
COST_BUDGET = 0.6  # the cost-aware placement's cap: a fraction of full-LoRA training cost (the goal's 60%)
RANDOM_BASE_SEED = 1000  # random-k draw i uses random.Random(RANDOM_BASE_SEED + i), as the first study did


@dataclass
class Protocol:
    """What one task's study runs: budgets (steps), seeds, LoRA settings, k and the random draws."""

    budgets: list[int] = field(default_factory=lambda: [60, 300])
    seeds: int = 3
    lr: float = 2e-3
    r: int = 8
    lora_alpha: float = 16.0
    k: int | None = None           # layers per placement (default: a quarter of the layers)
    random_draws: int = 5          # random-k placements (each × seeds)
    probes: bool = True            # single-layer probes
    placements: bool = True
    scores: list[str] | None = None  # card scores whose placements are trained (default: every PLACEMENT_SCORES)
    cost_cap: bool = True          # also train each score's cost-aware placement (cost ≤ COST_BUDGET)

    def __post_init__(self):
        if self.seeds < 1 or not self.budgets or any(b < 1 for b in self.budgets) or self.random_draws < 0:
            raise ValueError(f"invalid protocol: {self}")
        unknown = sorted(set(self.scores or ()) - set(PLACEMENT_SCORES.values()))
        if unknown:
            raise ValueError(f"unknown study score(s) {unknown}; choose from {sorted(PLACEMENT_SCORES.values())}")

    def placement_scores(self) -> dict[str, str]:
        """The labels and card scores whose placements this protocol trains."""
        return {label: score for label, score in PLACEMENT_SCORES.items()
                if self.scores is None or score in self.scores}

    def config(self, steps: int, seed: int) -> StudyConfig:
        return StudyConfig(steps=steps, r=self.r, lora_alpha=self.lora_alpha, lr=self.lr, seed=seed, seeds=1)


def study_cards(task: Task, proto: Protocol, out: Path, progress: bool = False) -> dict[int, object]:
    """One card per budget (coupling on; simulated and warm-up columns for that budget), cached in ``out``."""
    from ..pipeline.profiler import profile

    from ..card.budget import TrainingBudget
    from ..card.card import LayerCard

    cards = {}
    for steps in proto.budgets:
        path = Path(out) / f"card_{steps}steps.json"
        if path.exists():
            cards[steps] = with_attention(LayerCard.load(path), task)
            continue
        budget = TrainingBudget(steps=steps, lr=proto.lr, r=proto.r, lora_alpha=proto.lora_alpha)
        card = profile(task.model(), task.calibration, rank=proto.r, coupling=True, budget=budget,
                       rank_cross=True, progress=progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        card.save(path)
        cards[steps] = card
    return cards


def with_attention(card, task: Task):
    """A card saved before the cost model's attention term (``layerprof.card.cost``) gets it from the task:
    its model's config and its calibration batches' shapes, what ``profile`` records today."""
    from ..card.cost import attention_shape, mean_seq_len

    if "attention" in card.meta:
        return card
    shapes = [tuple(b["input_ids"].shape) for b in task.calibration
              if hasattr(b.get("input_ids"), "shape") and b["input_ids"].dim() == 2]
    card.meta["attention"] = attention_shape(task.model(), mean_seq_len(shapes))
    return card


class RunStore:
    """Finished trainings in one JSON file: key "steps|layers|seed" -> the run's figures."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.runs: dict[str, dict] = {}
        if self.path.exists():
            self.runs = json.loads(self.path.read_text(encoding="utf-8")).get("runs", {})

    @staticmethod
    def key(steps: int, layers: list[int], seed: int) -> str:
        return f"{steps}|{','.join(map(str, sorted(layers)))}|{seed}"

    def get(self, steps: int, layers: list[int], seed: int) -> dict | None:
        return self.runs.get(self.key(steps, layers, seed))

    def put(self, steps: int, layers: list[int], seed: int, run: dict) -> None:
        self.runs[self.key(steps, layers, seed)] = run
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps({"runs": self.runs}, indent=0))

    def gains(self, steps: int, layers: list[int], seeds: int) -> list[float] | None:
        out = [self.get(steps, layers, s) for s in range(seeds)]
        return None if any(o is None for o in out) else [o["gain"] for o in out]


def placement_sets(card, k: int, random_draws: int, scores: dict[str, str],
                   cost_cap: bool = True) -> dict[str, list[int]]:
    """Every placement compared at k layers: the card's candidates, the baselines and full LoRA.

    ``scores`` maps a label to a card score name (``layerprof.card.scores.SCORES``); each gets its
    top-k, its stratified-k (the best layer of each of uniform-k's depth bins), with ``cost_cap``
    its cost-aware placement, and, when the card has coupling, the coupled greedy on it.
    """
    from ..place.selectors import middle_k, uniform_k

    layers = [l.layer for l in card.layers]
    out: dict[str, list[int]] = {}
    for label, score in scores.items():
        rescored = rescore(card, score)
        if rescored is None:
            continue
        out[f"{label} top-k"] = rescored.place(layers=k, spread=False).layers
        out[f"{label} stratified-k"] = rescored.place(layers=k, spread=True).layers
        if cost_cap:
            # The card's cost-aware recommendation: the best predicted gain within 60% of full LoRA's modelled cost.
            out[f"{label} cost ≤ {COST_BUDGET}"] = rescored.place(budget=COST_BUDGET).layers
        if card.meta.get("coupling"):
            out[f"{label} coupled greedy"] = rescored.place(layers=k, coupled=True).layers
    for i in range(random_draws):
        out[f"random-k draw {i}"] = sorted(random.Random(RANDOM_BASE_SEED + i).sample(layers, k))
    out["first-k"] = layers[:k]
    out["last-k"] = layers[-k:]
    out["uniform-k"] = uniform_k(layers, k)
    out["middle-k"] = middle_k(layers, k)
    out["grad-norm top-k"] = card.place(layers=k, by="grad_norm").layers
    out["act-norm top-k"] = card.place(layers=k, by="act_norm").layers
    out["nfn top-k"] = card.place(layers=k, by="nfn").layers
    out["full"] = layers
    return out


def rescore(card, score: str):
    """A copy of ``card`` whose layers' ``score`` and ``rank`` are ``score`` (a name in ``layerprof.card.scores.SCORES``);
    None where the card lacks a column the score needs (an older card, or a budget score never computed)."""
    from ..card.card import LayerCard
    from ..card.scores import apply_score

    rows = [asdict(l) for l in card.layers]
    try:
        apply_score(rows, score)
    except (TypeError, KeyError):
        return None
    if any(not np.isfinite(r["score"]) for r in rows):
        return None
    return LayerCard(card.modules, rows, card.meta)


def run_protocol(task: Task, cards: dict[int, object], proto: Protocol, store: RunStore,
                 progress: Callable[[str], None] | None = None) -> None:
    """Train every probe and placement of ``proto`` not yet in ``store`` (cards: steps -> card)."""
    kinds = {m.name: m.kind for c in cards.values() for m in c.modules}
    for steps in proto.budgets:
        card = cards[steps]
        jobs: list[list[int]] = []
        if proto.probes:
            jobs += [[l.layer] for l in card.layers]
        if proto.placements:
            jobs += list(placement_sets(card, proto.k or card.default_layers(), proto.random_draws,
                                        proto.placement_scores(), proto.cost_cap).values())
        seen = set()
        for layers in jobs:
            if tuple(layers) in seen:
                continue
            seen.add(tuple(layers))
            train_placement(task, card, layers, steps, proto, store, kinds, progress)


def measured_gains(placements: dict, layers: list[int]) -> list[float] | None:
    """The seed gains of a study placement (study.json's ``placements`` of one budget) on exactly
    ``layers``, or None when the study has none (``train_placement`` then trains it)."""
    return next((p["gains"] for p in placements.values() if p["layers"] == layers), None)


def train_placement(task: Task, card, layers: list[int], steps: int, proto: Protocol, store: RunStore,
                    kinds: dict[str, str], progress: Callable[[str], None] | None = None) -> list[float]:
    """Train LoRA on ``layers`` for every seed of ``proto`` not yet in ``store``; the gains of all seeds."""
    for seed in range(proto.seeds):
        if store.get(steps, layers, seed) is not None:
            continue
        if progress:
            progress(f"{steps} steps: layers {layers} seed {seed}")
        mods = [m.name for m in card.modules if m.layer in layers]
        run = train_lora(task, mods, proto.config(steps, seed), kinds)
        store.put(steps, layers, seed, run)
    return store.gains(steps, layers, proto.seeds)


def summarize(cards: dict[int, object], store: RunStore, proto: Protocol) -> dict:
    """Probe correlations (with intervals) and placement results per budget, from finished runs."""
    out = {"budgets": {}}
    for steps in proto.budgets:
        card = cards[steps]
        entry: dict = {}
        probe = {l.layer: store.gains(steps, [l.layer], proto.seeds) for l in card.layers}
        if all(g is not None for g in probe.values()):
            gains = [probe[l.layer] for l in card.layers]
            spread, std = seed_spread(gains)
            entry["probe"] = {
                "mean_gain": {str(l): float(np.mean(g)) for l, g in probe.items()},
                "gains": {str(l): g for l, g in probe.items()},
                "range": spread, "seed_std": std, "separable": bool(spread > 3 * std),
                "spearman": {name: dict(zip(("rho", "lo", "hi"), bootstrap_spearman(vals, gains)))
                             for name, vals in layer_candidates(card).items()}}
        sets = placement_sets(card, proto.k or card.default_layers(), proto.random_draws, proto.placement_scores(),
                              proto.cost_cap)
        full = store.gains(steps, sets["full"], proto.seeds)
        rows = {}
        for name, layers in sets.items():
            g = store.gains(steps, layers, proto.seeds)
            if g is None:
                continue
            runs = [store.get(steps, layers, s) for s in range(proto.seeds)]
            rows[name] = {"layers": layers, "gains": g, "mean": float(np.mean(g)),
                          "std": float(np.std(g, ddof=1)) if len(g) > 1 else 0.0,
                          "fraction_of_full": float(np.mean(g) / np.mean(full)) if full and np.mean(full) > 0
                          else None,
                          "step_seconds": float(np.mean([r["step_seconds"] for r in runs]))}
        entry["placements"] = rows
        out["budgets"][str(steps)] = entry
    return out


