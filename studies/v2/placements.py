"""Study v2's placements: every rule PROTOCOL.md names, as sets of modules and a LoRA rank.

A placement is ``{"modules": [names], "r": rank, "layers": [blocks]}``. Block rules take all of a
block's target modules (the card's rows); the module-level rules (Candidate C, KappaTune) take modules
anywhere, under the parameter count of k whole blocks at r = 8.
"""
from __future__ import annotations

import random

import torch

from layerprof.place.selectors import depth_bins, middle_k, uniform_k

R = 8
RANDOM_DRAWS = 5
RANDOM_BASE_SEED = 1000     # draw i is random.Random(1000 + i).sample(layers, k), as in study v1
BUDGET_SWITCH_STEPS = 40    # the budget-aware rule's switch: √(20 · 80), between v2's two budgets


def blocks(card, layers: list[int], r: int = R) -> dict:
    layers = sorted(layers)
    return {"modules": sorted(m.name for m in card.modules if m.layer in layers), "r": r, "layers": layers}


def depth_rule(layers: list[int], k: int) -> list[int]:
    """The rule the default's picks resemble: the first layer, then the last layer of every other bin."""
    bins = depth_bins(layers, k)
    return sorted([bins[0][0]] + [b[-1] for b in bins[1:]])


def bin_first(layers: list[int], k: int) -> list[int]:
    """The first (shallowest) layer of each of the k depth bins."""
    return [b[0] for b in depth_bins(layers, k)]


def budget_aware(card, layers: list[int], k: int, steps: int) -> list[int]:
    """Pre-registered budget-aware candidate: the default below BUDGET_SWITCH_STEPS steps; at longer
    budgets the shallowest layer of each depth bin (study v1 and the held-out encoder task: the longer
    the fine-tune, the more the early layers gain)."""
    return card.place(layers=k).layers if steps < BUDGET_SWITCH_STEPS else bin_first(layers, k)


def module_score(m) -> float:
    """Candidate C's per-module score: the default's ρ(r)²× / noise amp, on one module."""
    x = m.resnorm2_rank_x
    return float("-inf") if x is None or not m.noise_amp > 0 else x / m.noise_amp


def modules_under(card, ranked: list[str], budget: int) -> list[str]:
    """Modules taken in ``ranked`` order while their LoRA parameters (r = 8) fit ``budget``."""
    params = {m.name: m.lora_params for m in card.modules}
    out, used = [], 0
    for name in ranked:
        if used + params[name] <= budget:
            out.append(name)
            used += params[name]
    return out


def module_level(card, k: int) -> dict:
    """Candidate C: the modules with the highest per-module score, under k blocks' parameter count."""
    budget = sum(m.lora_params for m in card.modules if m.layer in card.place(layers=k).layers)
    ranked = sorted(card.modules, key=lambda m: (-module_score(m), m.name))
    mods = modules_under(card, [m.name for m in ranked], budget)
    return {"modules": sorted(mods), "r": R, "layers": sorted({m.layer for m in card.modules if m.name in mods})}


def kappatune(model, card, k: int) -> dict:
    """PEFT's KappaTune (peft.helpers): the card's target modules with the lowest weight condition number,
    as many as k blocks hold (7 × k for a Llama block)."""
    from peft.helpers import KappaTuneSelector

    targets = {m.name for m in card.modules}
    ranked = [n for n in KappaTuneSelector(model, show_progress=False).get_best_targets() if n in targets]
    per_block = len(targets) // len(card.layers)
    mods = ranked[: per_block * k]
    return {"modules": sorted(mods), "r": R, "layers": sorted({m.layer for m in card.modules if m.name in mods})}


def one_minus_cka(model, card, batches: list[dict]) -> dict[int, float]:
    """Forward only: 1 − linear CKA between each block's input and output hidden states over the
    calibration tokens (padding excluded). Higher = the block changes its representation more."""
    import re

    modules = dict(model.named_modules())
    blocks_ = {}
    for m in card.modules:  # a block is the prefix of its modules' names up to "<layers>.<index>"
        match = re.match(r"^(.*?(?:^|\.)(?:h|layers|layer|blocks|block)\.\d+)\.", m.name)
        blocks_[m.layer] = modules[match.group(1)]
    xs: dict[int, list] = {l: [] for l in blocks_}
    ys: dict[int, list] = {l: [] for l in blocks_}
    hooks = []
    for l, mod in blocks_.items():
        def hook(mod, args, kwargs, out, l=l):
            x = args[0] if args else kwargs["hidden_states"]
            y = out[0] if isinstance(out, tuple) else out
            xs[l].append(x.detach().double().cpu())
            ys[l].append(y.detach().double().cpu())
        hooks.append(mod.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            for b in batches:
                model(**{k: v for k, v in b.items() if k != "labels"})
    finally:
        for h in hooks:
            h.remove()
    masks = torch.cat([b["attention_mask"].reshape(-1) for b in batches]).bool()
    out = {}
    for l in blocks_:
        X = torch.cat([x.reshape(-1, x.shape[-1]) for x in xs[l]])[masks]
        Y = torch.cat([y.reshape(-1, y.shape[-1]) for y in ys[l]])[masks]
        X, Y = X - X.mean(0), Y - Y.mean(0)
        cka = (Y.T @ X).square().sum() / ((X.T @ X).square().sum().sqrt() * (Y.T @ Y).square().sum().sqrt())
        out[l] = float(1 - cka)
    return out


def all_placements(card, model, calibration: list[dict], k: int, steps: int) -> dict[str, dict]:
    """Every placement of the protocol at budget ``steps``: label → placement."""
    layers = [l.layer for l in card.layers]
    # LoRA on every block at the parameter count of k blocks at r = 8: r scaled by k / L, rounded, ≥ 1.
    r_all = max(1, round(R * k / len(layers)))
    cka = one_minus_cka(model, card, calibration)
    out = {
        "full LoRA r=8": blocks(card, layers),
        "default": blocks(card, card.place(layers=k).layers),
        "budget-aware": blocks(card, budget_aware(card, layers, k, steps)),
        "module-level": module_level(card, k),
        "uniform-k": blocks(card, uniform_k(layers, k)),
        "depth rule": blocks(card, depth_rule(layers, k)),
        "bin-first": blocks(card, bin_first(layers, k)),
        "first-k": blocks(card, layers[:k]),
        "last-k": blocks(card, layers[-k:]),
        "middle-k": blocks(card, middle_k(layers, k)),
        "grad-norm top-k": blocks(card, card.place(layers=k, by="grad_norm").layers),
        "act-norm top-k": blocks(card, card.place(layers=k, by="act_norm").layers),
        "1-CKA top-k": blocks(card, sorted(sorted(cka, key=lambda l: (-cka[l], l))[:k])),
        "KappaTune": kappatune(model, card, k),
        f"all layers r={r_all}": blocks(card, layers, r=r_all),
    }
    for i in range(RANDOM_DRAWS):
        out[f"random-k draw {i}"] = blocks(card, random.Random(RANDOM_BASE_SEED + i).sample(layers, k))
    return out


def probe_layers(layers: list[int], n: int = 10) -> list[int]:
    """n layers spread over depth for the single-layer probes (all of them when there are ≤ n)."""
    if len(layers) <= n:
        return list(layers)
    return sorted({layers[round(i * (len(layers) - 1) / (n - 1))] for i in range(n)})
