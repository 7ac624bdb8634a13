"""Merge the cards of a grouped sweep: several sweeps over the same batches, disjoint groups of whole layers.

When dense statistics for every layer do not fit in memory at once (``layerprof.pipeline.memory_plan``),
``profile`` sweeps the batches once per group and this puts the parts back together.
"""
from __future__ import annotations

import dataclasses

from ..utils.errors import ProfileError
from ..stats.finalize import stability_record
from ..card.scores import apply_score, rank_layers


def merge_group_cards(parts: list):
    """One card from sweeps over the same batches with disjoint groups of whole layers.

    Module rows and each layer's own columns come from the sweep that profiled the layer;
    what depends on every layer is recomputed: gain share, rank, the cost of each layer
    (backward depth runs over all layers), split-half stability. Sweep time is the sum.
    """
    from ..card.card import LayerCard
    from ..card.cost import cost_model

    modules = [m for p in parts for m in p.modules]
    layers = [dataclasses.asdict(l) for p in parts for l in p.layers]
    if len({l["layer"] for l in layers}) != len(layers):
        raise ProfileError("internal: a layer was profiled in two sweeps")  # groups are whole layers
    meta = parts[0].meta
    for p in parts[1:]:
        if p.meta["data"]["hash"] != meta["data"]["hash"] or p.meta["data"]["rows"] != meta["data"]["rows"]:
            raise ProfileError("the batches changed between sweeps (different data fingerprint): profiling in "
                               "several sweeps needs batches that iterate the same way every time")
    scores = {p.meta["settings"]["score"] for p in parts}
    if len(scores) > 1:  # some group fell back to the naive score (build.score_or_fallback): all of them do
        fell = next(p for p in parts if p.meta["settings"].get("score_fallback"))
        meta = {**meta, "settings": {**meta["settings"], "score": fell.meta["settings"]["score"],
                                     "score_fallback": fell.meta["settings"]["score_fallback"]}}
        apply_score(layers, meta["settings"]["score"])
    costs = cost_model(modules, meta.get("heads", []), meta.get("attention"))  # every layer's modules and the heads
    total = sum(l["resnorm"] ** 2 for l in layers)
    rank = meta["settings"]["rank"]
    for l in layers:
        l["gain_share"] = l["resnorm"] ** 2 / total if total > 0 else float("nan")
        l["cost"] = costs.cost([l["layer"]], rank).fraction
    layers.sort(key=lambda l: l["layer"])
    rank_layers(layers)
    have_halves = all(p.meta["stability"]["batches_per_half"][1] > 0 for p in parts)
    sweeps = [p.meta["sweep"] for p in parts]
    merged = {**meta,
              "stability": stability_record(layers, meta["data"]["batches"], have_halves),
              "unfired": sorted({n for p in parts for n in p.meta["unfired"]}),
              "unmasked": sorted({n for p in parts for n in p.meta.get("unmasked", [])}),
              "sweep": {**sweeps[0],
                        "seconds": sum(s["seconds"] for s in sweeps),
                        "finalize_seconds": sum(s["finalize_seconds"] for s in sweeps),
                        "rows_per_second": meta["data"]["rows"] / max(sum(s["seconds"] for s in sweeps), 1e-12),
                        "peak_memory_bytes": max(s["peak_memory_bytes"] or 0 for s in sweeps),
                        "statistics_bytes": max(s.get("statistics_bytes", 0) for s in sweeps),
                        "gram_updates": sum(s.get("gram_updates", 0) for s in sweeps),
                        "sweeps": len(parts)}}
    merged["settings"] = {**meta["settings"],
                          "sketched_modules": sum(p.meta["settings"]["sketched_modules"] for p in parts)}
    return LayerCard(modules, layers, merged)
