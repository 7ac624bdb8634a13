"""The placement study's LoRA harness: fine-tune LoRA on named modules and measure the gain.

``train_lora`` fine-tunes one placement of a fresh model with PEFT (r, alpha, lr, steps,
seeded adapter init, identical batches) and records the eval-loss improvement, trainable
parameters, median step time, peak memory and adapted modules; ``probe_layers`` runs it
for every layer alone (the measured column of ``layerprof card --probe-steps``). The
study's protocol over placements, seeds and budgets is ``layerprof.study.protocol``.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..utils.memory import PeakMemory
from ..card.rankcorr import spearman
from .task import Task

@dataclass
class StudyConfig:
    """Identical LoRA training settings for every placement."""

    steps: int = 60          # optimizer steps per run
    r: int = 8               # LoRA rank
    lora_alpha: float = 16   # LoRA alpha
    lr: float = 2e-3         # AdamW learning rate
    seed: int = 0            # first seed for adapter init
    seeds: int = 1           # runs per placement (seed, seed+1, ...); gains reported as mean ± std

    def __post_init__(self):
        if self.steps < 1 or self.r < 1 or self.lr <= 0 or self.seeds < 1:
            raise ValueError(f"invalid study settings: {self}")


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
    with PeakMemory(device) as mem:
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


def layer_candidates(card) -> dict[str, list[float]]:
    """Every per-layer score a placement could rank by (the card's SCORES that are filled), with the
    baselines ‖C‖, activation norm, nfn, and depth."""
    from ..card.scores import SCORES

    out = {}
    rows = [asdict(l) for l in card.layers]
    for name in SCORES:
        vals = [SCORES[name](r) for r in rows]
        if all(np.isfinite(vals)):
            out[name] = vals
    out["grad_norm"] = [l.grad_norm for l in card.layers]
    out["act_norm"] = [l.act_norm for l in card.layers]
    out["nfn"] = [l.nfn for l in card.layers]
    out["depth"] = [float(l.layer) for l in card.layers]
    return out


def probe_layers(card, task: Task, cfg: StudyConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Single-layer LoRA per layer: measured gains and their Spearman with each candidate score."""
    gains = {}
    for row in card.layers:
        if progress:
            progress(f"probe: layer {row.layer} alone")
        mods = [m.name for m in card.modules if m.layer == row.layer]
        gains[row.layer] = train_seeds(task, mods, cfg, {m.name: m.kind for m in card.modules})["gain"]
    measured = [gains[l.layer] for l in card.layers]
    return {"steps": cfg.steps, "r": cfg.r, "lr": cfg.lr, "measured_gain": {str(k): v for k, v in gains.items()},
            "spearman": {name: spearman(vals, measured) for name, vals in layer_candidates(card).items()}}
