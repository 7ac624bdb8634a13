"""Matplotlib figures of a LayerCard, for the HTML report (``layerprof.output.report_html``).

Each function takes a card (and, where it marks a choice, the plan) and returns a
``matplotlib.figure.Figure`` or ``None`` when the card lacks what the figure shows (the
coupling heat map needs a card profiled with ``coupling=True``). ``svg`` renders a
figure to an inline SVG string: text is drawn as paths, so the page needs no font and
no network. Figures are built on ``matplotlib.figure.Figure`` directly (not pyplot),
so nothing global changes in the caller's matplotlib state.
"""
from __future__ import annotations

import io
import math
import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..card.card import LayerCard
    from ..place.placement import Plan

CHOSEN = "#d62728"  # the recommended layers / plan, in every figure
OTHER = "#1f77b4"
BASELINES = (("score", "card score"), ("resnorm", "ρ² (the paper's resnorm)"), ("resnorm2_x", "ρ²× (cross-half)"),
             ("sim_gain", "simulated LoRA gain"), ("lca_gain", "warm-up LCA gain"),
             ("grad_norm", "gradient norm ‖C‖"), ("act_norm", "activation norm"),
             ("nfn", "nfn (PLoP-style)"), ("measured_gain", "measured single-layer gain"))


def _figure(width: float, height: float) -> "Figure":
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def svg(fig: "Figure") -> str:
    """The figure as an inline ``<svg>`` element (no XML prolog, text as paths)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "layerprof"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    # The RDF <metadata> block only names the creator; drop it (and its namespace URLs).
    return re.sub(r"<metadata>.*?</metadata>\s*", "", text[text.index("<svg"):], flags=re.S)


def _layers(card: "LayerCard") -> np.ndarray:
    return np.array([l.layer for l in card.layers])


def share_and_capture(card: "LayerCard", chosen: list[int]) -> "Figure":
    """Per-layer gain share (bars; the chosen layers in red) and rank-r capture (line)."""
    fig = _figure(8, 3.2)
    ax = fig.add_subplot()
    x = _layers(card)
    share = np.array([l.gain_share for l in card.layers])
    ax.bar(x, share, color=[CHOSEN if l in chosen else OTHER for l in x], label="gain share ρ²_ℓ / Σρ²")
    ax.set_xlabel("layer")
    ax.set_ylabel("gain share")
    ax.set_xticks(x)
    ax2 = ax.twinx()
    ax2.plot(x, [l.rank_capture for l in card.layers], "k.-", lw=1, label=f"rank capture ρ(r={card.rank})² / ρ²")
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("rank capture")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper right")
    ax.set_title("Where ρ², the paper's predicted gain, is (red: recommended layers)", fontsize=10)
    return fig


def conditioning(card: "LayerCard") -> "Figure":
    """Activation energy, worst input conditioning and noise amplification per layer (log scales)."""
    fig = _figure(8, 2.8)
    axes = fig.subplots(1, 3)
    x = _layers(card)
    cond = {l: max((m.cond for m in card.modules if m.layer == l and math.isfinite(m.cond)), default=float("nan"))
            for l in x}
    series = (("activation energy", [l.energy for l in card.layers]),
              ("max input condition number", [cond[l] for l in x]),
              ("noise amplification", [l.noise_amp for l in card.layers]))
    for ax, (title, ys) in zip(axes, series):
        ys = np.asarray(ys, dtype=float)
        ax.bar(x, np.where(ys > 0, ys, np.nan), color=OTHER)
        if np.nanmax(ys, initial=0) > 0:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("layer")
        ax.set_xticks(x)
    return fig


def pareto(card: "LayerCard", plan: "Plan") -> "Figure":
    """The card's score vs modelled cost: every single layer, the Pareto front, the chosen plan (all on the
    plan's scale: a share of the all-layer score, negative scores counting as zero, as placement counts them)."""
    fig = _figure(8, 3.6)
    ax = fig.add_subplot()
    front = plan.front
    ax.step([p["cost"] for p in front], [p["gain_fraction"] for p in front], "k-", where="post", lw=1,
            label="Pareto front (best score for its cost)")
    ax.plot([p["cost"] for p in front], [p["gain_fraction"] for p in front], "ko", ms=3)
    scores = np.clip([l.score for l in card.layers], 0.0, None)
    shares = scores / scores.sum() if scores.sum() > 0 else scores
    ax.scatter([l.cost for l in card.layers], shares, color=OTHER, s=18, label="one layer alone", zorder=3)
    for l, s in zip(card.layers, shares):
        ax.annotate(str(l.layer), (l.cost, s), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.scatter([plan.cost], [plan.predicted_gain_fraction], marker="*", s=180, color=CHOSEN, zorder=4,
               label=f"recommended: layers {plan.layers}")
    ax.set_xlabel("training cost (fraction of full-layer LoRA)")
    ax.set_ylabel("score (fraction of all layers)")
    ax.set_xlim(0, 1.05)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, loc="upper left")  # the front rises to the upper right
    return fig


def coupling(card: "LayerCard") -> "Figure | None":
    """Heat map of the layer coupling ρ_ab (docs/method.md); ``None`` when the card has no coupling."""
    c = card.meta.get("coupling")
    if not c:
        return None
    rho = np.asarray(c["rho"], dtype=float)
    fig = _figure(4.8, 4)
    ax = fig.add_subplot()
    im = ax.imshow(rho, vmin=-1, vmax=1, cmap="RdBu_r")
    ticks = np.arange(len(c["layers"]))
    ax.set_xticks(ticks, [str(l) for l in c["layers"]])
    ax.set_yticks(ticks, [str(l) for l in c["layers"]])
    ax.set_xlabel("layer")
    ax.set_ylabel("layer")
    fig.colorbar(im, ax=ax, label="coupling ρ")
    return fig


def selector_ranks(card: "LayerCard") -> "Figure":
    """Each selector's rank of every layer (1 = its first pick), the card's score on top."""
    from ..card.scores import score_label

    score = card.meta.get("settings", {}).get("score", "resnorm2")
    rows = [(f"card score ({score_label(score)})" if key == "score" else label,
             [getattr(l, key) for l in card.layers]) for key, label in BASELINES
            if all(getattr(l, key, None) is not None for l in card.layers)]
    x = _layers(card)
    ranks = np.array([np.argsort(np.argsort(-np.asarray(v, dtype=float), kind="stable"), kind="stable") + 1
                      for _, v in rows])
    fig = _figure(8, 0.5 * len(rows) + 1.2)
    ax = fig.add_subplot()
    ax.imshow(ranks, cmap="viridis_r", aspect="auto", vmin=1, vmax=max(len(x), 2))
    for i in range(ranks.shape[0]):
        for j in range(ranks.shape[1]):
            ax.text(j, i, str(ranks[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if ranks[i, j] <= len(x) / 2 else "black")
    ax.set_xticks(np.arange(len(x)), [str(l) for l in x])
    ax.set_yticks(np.arange(len(rows)), [label for label, _ in rows])
    ax.set_xlabel("layer (cell: rank given by the selector, 1 = first choice)")
    return fig
