"""The card as a report: its sections (summary, recommendation, per-layer and per-module tables, notes),
rendered to Markdown here and to one HTML page by ``layerprof.output.report_html``."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..utils.errors import PlacementError

if TYPE_CHECKING:
    from ..card.card import LayerCard
    from ..card.meta import Meta, Stability
    from ..place.placement import Plan


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf"
        if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
            return f"{x:.{digits - 1}e}"
        return f"{x:.{digits}g}" if abs(x) >= 1 else f"{x:.{digits}f}"
    return str(x)


def _bytes(n: int | None) -> str:
    from ..utils.memory import human_bytes

    return human_bytes(n, digits=1) if n else "–"


def _table(headers: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(headers))) + "|"]
    out += ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return out


def _bar(share: float, width: int = 20) -> str:
    if not isinstance(share, float) or not math.isfinite(share):
        return ""
    n = int(round(min(max(share, 0.0), 1.0) * width))  # a share is in [0, 1]; a bar never overflows
    return "█" * n + "·" * (width - n)


def _score_note(info: "Meta", label: str) -> str:
    """Which score placed, how, and why (the placement study's choice, or the user's)."""
    how = "placed stratified-k (the best layer of each of k equal depth bins)"
    if not info.settings.score_default:
        why = "chosen with score= / --score"
    else:
        # The report states what the card measured on this model; how well the default places on real
        # models is the study's to say, on its results page, never quoted here.
        why = ("layerprof's default placement; how it compares with uniform-k, PEFT's KappaTune and LoRA on "
               "every layer at equal parameters is measured on real LLMs in the project's study "
               "(its docs/results.md); check any placement against full LoRA on your own eval set")
        if info.settings.score_fallback:
            why += f"; this card fell back to it because of {info.settings.score_fallback}"
    return (f"Score = {label}, {how}: {why}. ρ², the paper's resnorm, is in the layer table beside it; with a "
            "budget, the simulated LoRA gain for that budget is too (docs/method.md says how to read each).")


def _baselines_line(card: "LayerCard", info: "Meta", k: int) -> str:
    """The same k placed by the selectors a user would otherwise reach for (the study's baselines)."""
    from ..place.selectors import middle_k, uniform_k

    ids = [l.layer for l in card.layers]
    parts = [f"top-k on the score {card.place(layers=k, spread=False).layers}",
             f"uniform-k {uniform_k(ids, k)}", f"middle-k {middle_k(ids, k)}",
             f"first-k {ids[:k]}", f"last-k {ids[-k:]}",
             f"grad-norm {card.place(layers=k, by='grad_norm').layers}",
             f"act-norm {card.place(layers=k, by='act_norm').layers}"]
    if info.coupling:
        parts.insert(1, f"coupled greedy on the score {card.place(layers=k, coupled=True).layers}")
    return "Other placements of the same k: " + "; ".join(parts) + "."


def _noise_and_predictions(card: "LayerCard", info: "Meta") -> list[str]:
    """Rule 1's noise columns and, with a budget, the predicted gains for that fine-tune."""
    if all(l.resnorm2_x is None for l in card.layers):
        return []
    budget = info.budget
    has_rank_x = any(l.resnorm2_rank_x is not None for l in card.layers)
    lines = ["", "### Noise and predicted gains", "",
             "ρ²× = ρ² estimated across the split halves (unbiased for the signal; negative when the gradient is "
             "mostly sampling noise); noise share = (ρ² − ρ²×) / ρ², flagged above 0.5 with the calibration "
             "batches that would halve it."
             + (" ρ(r)²× is the rank-r ρ(r)² estimated the same way (each half's top-r subspace against the "
                "other half)." if has_rank_x else "")
             + (f" Predicted gains (nats/token) are for the fine-tune of the budget: {budget.steps} steps, "
                f"lr {budget.lr:g}, r {budget.r}, alpha {budget.lora_alpha:g}." if budget else ""), ""]
    headers = ["layer", "ρ²", "ρ²×", "noise share", "batches to halve", "‖C‖²×"] + (["ρ(r)²", "ρ(r)²×"] if has_rank_x else [])
    has_sim = any(l.sim_gain is not None for l in card.layers)
    has_lca = any(l.lca_gain is not None for l in card.layers)
    headers += (["simulated gain", "κ"] if has_sim else []) + (["warm-up LCA gain"] if has_lca else [])
    rows = []
    for l in card.layers:
        flag = l.noise_share is not None and l.noise_share > 0.5
        row = [str(l.layer), l.resnorm ** 2, l.resnorm2_x, l.noise_share,
               (str(l.batches_to_halve_noise) if l.batches_to_halve_noise else "–") + (" (noisy)" if flag else ""),
               l.grad_norm2_x]
        row += [l.resnorm_rank ** 2, l.resnorm2_rank_x] if has_rank_x else []
        row += ([l.sim_gain, l.kappa] if has_sim else []) + ([l.lca_gain] if has_lca else [])
        rows.append(row)
    return lines + _table(headers, rows)


@dataclass
class Section:
    """One part of the report: ``key`` names it for renderers (``report_html`` places the plots after
    the recommendation by it, never by heading text); ``title`` is its heading, the page title for the
    summary and None for the closing note; ``body`` its Markdown lines."""

    key: str
    title: str | None
    body: list[str]


def markdown(card: "LayerCard", plan: "Plan | None" = None) -> str:
    """The card as Markdown: header, recommendation, per-layer table, per-module table, notes.

    ``plan``: the placement to recommend (the one the caller chose and wrote the config for);
    default: the card's default, ``card.place(layers=card.default_layers())``.
    """
    return render(sections(card, plan))


def render(parts: list[Section]) -> str:
    lines: list[str] = []
    for part in parts:
        if part.key == "summary":
            lines += [f"# {part.title}", ""] + part.body
        elif part.title:
            lines += ["", f"## {part.title}", ""] + part.body
        else:
            lines += [""] + part.body
    return "\n".join(lines)


def sections(card: "LayerCard", plan: "Plan | None" = None) -> list[Section]:
    """The report's sections in order: summary, recommendation and layers (a card with layer rows),
    modules, notes (when there are any) and the closing note."""
    from ..card.scores import score_label

    info = card.info
    score = score_label(info.settings.score)
    model = info.model
    out = [Section("summary", f"Layer Card — {model.class_}" + (f" ({model.name_or_path})" if model.name_or_path else ""),
                   _summary(info, score))]
    if card.layers:
        plan = plan if plan is not None else card.place(layers=card.default_layers())
        out += [Section("recommendation", "Recommendation", _recommendation(card, info, plan, score)),
                Section("layers", "Layers", _layers(card, info, score))]
    rows = [[m.name, str(m.layer) if m.layer is not None else "–", f"{m.d_in}×{m.d_out}", m.rows, m.resnorm,
             m.rank_capture, m.energy, m.cond, m.erank, m.noise_amp, m.grad_norm, m.nfn, m.resid_explained]
            for m in card.modules]
    out.append(Section("modules", "Modules", _table(["module", "layer", "shape", "rows", "ρ", "rank capture", "energy",
                                                     "cond", "erank", "noise amp", "‖C‖", "nfn", "resid explained"],
                                                    rows)))
    notes = _notes(info)
    if notes:
        out.append(Section("notes", "Notes", [f"- {n}" for n in notes]))
    out.append(Section("closing", None, [
        "ρ² / 2 is the loss decrease that layer's best linear correction predicts under a local quadratic "
        "model (docs/method.md); large noise amp or cond means ill-conditioned inputs that inflate ρ.", ""]))
    return out


def _summary(info: "Meta", score: str) -> list[str]:
    data, settings, sweep, model = info.data, info.settings, info.sweep, info.model
    threads = sweep.finalize_threads
    lines = [f"- model: {model.parameters:,} parameters, dtype {model.dtype}, config {model.config_hash}",
             f"- data: {data.rows:,} rows in {data.batches} batches (fingerprint {data.hash})"
             + (f"; {len(info.skipped)} batch(es) skipped" if info.skipped else ""),
             f"- settings: rank r = {settings.rank}, damping δ = {settings.damping:g}, score {score}, "
             f"backend {settings.backend}, statistics in {settings.dtype}",
             f"- sweep: {sweep.seconds:.2f} s ({_fmt(sweep.rows_per_second)} rows/s), "
             f"finalize {sweep.finalize_seconds:.2f} s"
             + (f" ({threads} thread{'s' if threads != 1 else ''}"
                + (f", {sweep.finalize_lapack}'s LAPACK" if sweep.finalize_lapack else "") + ")"
                if threads else "") + f", peak memory {_bytes(sweep.peak_memory_bytes)} "
             f"({sweep.peak_memory_kind})",
             ]
    if info.budget:
        lines.append("- predictions: " + "; ".join(_prediction_parts(info)))
    lines.append(_stability_line(info.stability))
    return lines


def _prediction_parts(info: "Meta") -> list[str]:
    b, sweep = info.budget, info.sweep
    parts = [f"budget {b.steps} steps, lr {b.lr:g}, r {b.r}, alpha {b.lora_alpha:g}"]
    if info.simulate:
        parts.append(f"simulated LoRA {info.simulate.seconds:.2f} s "
                     f"({info.simulate.seconds / max(sweep.seconds, 1e-9):.2f}× the sweep)")
    if info.warmup:
        w = info.warmup
        parts.append(f"warm-up {w.steps} steps, {w.seconds:.2f} s "
                     f"({w.cost_of_full_lora_finetune:.0%} of a full-LoRA fine-tune's steps)")
    return parts


def _stability_line(stab: "Stability") -> str:
    tau = stab.kendall_tau
    if tau is None:
        return f"- stability: {stab.note or 'not available'}"
    verdict = "stable" if stab.stable else (
        f"UNSTABLE (τ < {stab.threshold}): more calibration tokens would likely change the ranking")
    overlap = stab.top_k_overlap
    if overlap is not None and overlap < 1:
        # τ weighs every pair of layers alike; the placement's picks live at the top, where the
        # halves can disagree under a high τ (an encoder's top layer under a small head, for one).
        verdict += (f"; but the two halves' top-{stab.top_k} share only {overlap:.0%} of their layers, "
                    "so the first picks could change with other calibration data: profile more batches "
                    "or compare the other placements below")
    return (f"- stability: split-half Kendall τ = {tau:.2f}, top-{stab.top_k} overlap "
            f"{_fmt(overlap)} — {verdict}")


def _recommendation(card: "LayerCard", info: "Meta", plan: "Plan", score: str) -> list[str]:
    k = len(plan.layers)
    try:
        cheap = card.place(objective="cost", target_gain=0.9)
        cheap_line = (f"Cost-aware alternative: the cheapest placement reaching 90% of the all-layer score adapts "
                      f"layers {', '.join(map(str, cheap.layers))} at {cheap.cost:.0%} of full-layer LoRA's cost "
                      f"(`layerprof place CARD --target-gain 0.9`; `--budget F` caps the cost instead).")
    except PlacementError as e:
        cheap_line = f"Cost-aware alternative: none ({e})."
    return [f"Adapt layers **{', '.join(map(str, plan.layers))}** ({k} of {len(card.layers)}, placed by score = "
            f"{score}): "
            f"{plan.predicted_gain_fraction:.0%} of the all-layer score at "
            f"{plan.cost:.0%} of full-layer LoRA's {_cost_kind(info)} training cost, "
            f"{plan.cost_detail.adapter_params:,} adapter parameters, {plan.cost_detail.adapted_modules} "
            f"adapted modules. `layerprof place CARD --layers {k}` writes the LoRA config.",
            "",
            cheap_line,
            "", _score_note(info, score),
            "", _baselines_line(card, info, k)]


def _layers(card: "LayerCard", info: "Meta", score: str) -> list[str]:
    rank = info.settings.rank
    lines = [f"score = {score} (what placement maximizes); gain share = ρ_ℓ² / Σ ρ² (ρ_ℓ² = sum of module "
             f"resnorm²); cost = {_cost_kind(info)} training cost "
             "of adapting this layer alone, as a fraction of full-layer LoRA (backward stops at the lowest "
             "adapted layer).", ""]
    rows = [[str(l.layer), _bar(l.gain_share), l.gain_share, l.resnorm, l.resnorm_rank, l.rank_capture,
             l.energy, l.noise_amp, l.grad_norm, l.act_norm, l.nfn, l.cost, str(l.rank)] for l in card.layers]
    lines += _table(["layer", "gain share", "", "ρ", f"ρ(r={rank})", "rank capture", "energy",
                     "noise amp", "‖C‖ (grad)", "act norm", "nfn", "cost", "rank"], rows)
    return lines + _noise_and_predictions(card, info)


def _notes(info: "Meta") -> list[str]:
    notes = []
    if info.unfired:
        notes.append(f"Targets whose tap never fired (no gradient reached them; not on the card): "
                     f"{', '.join(info.unfired)}.")
    if info.unmasked:
        notes.append(f"Modules whose rows could not be matched to the attention mask (all rows counted): "
                     f"{', '.join(info.unmasked)}.")
    for s in info.skipped:
        notes.append(f"Batch {s.batch} skipped: {s.reason}.")
    return notes


def _cost_kind(info: "Meta") -> str:
    """How the card's costs were made: FLOP-modelled, or fitted to steps timed on the user's machine."""
    return "measured (fitted to LoRA steps timed on this machine)" if info.step_cost else "modelled"
