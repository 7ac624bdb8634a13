"""How far two cards agree: does a card transfer across tasks, seeds and token counts?

Over the layers both cards have: Kendall τ and Spearman ρ of the layer scores, the
overlap of the top-k placements (k = a quarter of the layers unless given), and the
same τ for the baseline columns, so a user sees whether the disagreement is in the
card's score or in the data.

Only cards of the same model (class and config fingerprint) with the same layers mean
anything side by side: layer i of a GPT-2 and layer i of a Llama are not the same layer.
Other pairs are refused, or compared with ``force=True``, and the result then lists what
differs under ``forced``.
"""
from __future__ import annotations

from .card import LayerCard, default_k
from ..utils.errors import LayerprofError
from .rankcorr import kendall_tau, spearman


def mismatches(a: LayerCard, b: LayerCard) -> list[str]:
    """Why two cards are not of one model with the same layers (empty when they are)."""
    ma, mb = a.meta["model"], b.meta["model"]
    out = []
    if ma.get("class") != mb.get("class"):
        out.append(f"model classes differ (A {ma.get('class')}, B {mb.get('class')})")
    elif ma.get("config_hash") != mb.get("config_hash"):
        out.append(f"model configs differ (A {ma.get('config_hash')}, B {mb.get('config_hash')}: another size or "
                   "architecture)")
    la, lb = [l.layer for l in a.layers], [l.layer for l in b.layers]
    if la != lb:
        out.append(f"layers differ (A has {len(la)}, B has {len(lb)})")
    return out


def compare(a: LayerCard, b: LayerCard, k: int | None = None, force: bool = False) -> dict:
    """Agreement of two cards on their common layers (see module docstring)."""
    why = mismatches(a, b)
    if why and not force:
        raise LayerprofError(f"these cards are not of the same model: {'; '.join(why)}. Layer indices do not "
                             "correspond across models, so their agreement means nothing; compare cards of one "
                             "model (other data, seeds or budgets), or pass --force (force=True) to compare "
                             "layer i with layer i anyway")
    common = sorted({l.layer for l in a.layers} & {l.layer for l in b.layers})
    if len(common) < 2:
        raise LayerprofError(f"the cards share {len(common)} layer(s) ({common}); comparing rankings needs two or more")
    k = k or default_k(len(common))
    if not 1 <= k <= len(common):
        raise LayerprofError(f"k must be in 1..{len(common)}, got {k}")

    def col(card, name):
        return [getattr(card.layer(l), name) for l in common]

    def top(card):
        scores = dict(zip(common, col(card, "score")))
        return set(sorted(common, key=lambda l: -scores[l])[:k])

    ta, tb = top(a), top(b)
    return {
        "layers": common,
        "only_in_a": sorted({l.layer for l in a.layers} - set(common)),
        "only_in_b": sorted({l.layer for l in b.layers} - set(common)),
        "k": k,
        "kendall_tau": kendall_tau(col(a, "score"), col(b, "score")),
        "spearman": spearman(col(a, "score"), col(b, "score")),
        "top_k_a": sorted(ta),
        "top_k_b": sorted(tb),
        "top_k_overlap": len(ta & tb) / k,
        "baselines_kendall_tau": {c: kendall_tau(col(a, c), col(b, c)) for c in ("grad_norm", "act_norm", "nfn")},
        "same_model": a.meta["model"].get("config_hash") == b.meta["model"].get("config_hash"),
        "same_data": a.meta["data"].get("hash") == b.meta["data"].get("hash"),
        "forced": why,
    }
