"""The card as one self-contained HTML page: the Markdown report, with the plots inline as SVG.

No scripts, stylesheets, fonts or images are fetched: the page renders offline.
"""
from __future__ import annotations

import html as _html
import re
from typing import TYPE_CHECKING

from .report import render, sections

if TYPE_CHECKING:
    from ..card.card import LayerCard
    from ..place.placement import Plan


FIGURES = (("fig-share", "Gain share and rank capture",
            "Bars: each layer's share of ρ², the paper's predicted gain (ρ²_ℓ / Σρ²), the recommended layers in red. "
            "Line: the share of a layer's ρ² that a rank-r adapter can capture; low capture means the "
            "layer wants a higher rank than r."),
           ("fig-pareto", "Score vs cost",
            "Every single layer (blue, labelled), the best share of the card's score reachable at each training cost "
            "(modelled from FLOPs, or fitted to timed LoRA steps with --measure-cost; the Pareto front, black) and the recommended placement (red star). Low layers cost more: "
            "the backward pass has to reach them."),
           ("fig-conditioning", "Energy, conditioning, noise amplification",
            "Large condition numbers or noise amplification mean ill-conditioned inputs: a layer's ρ there can be "
            "inflated by directions a short fine-tune will not follow. Compare with the selectors below."),
           ("fig-coupling", "Layer coupling",
            "ρ_ab between the output changes of the layers' best corrections (docs/method.md): near 0, gains add; "
            "near ±1, two layers can do each other's work and adapting both gains less than the sum."),
           ("fig-selectors", "The card's ranking beside the baseline selectors",
            "Each row ranks the layers by one selector (1 = first choice). Where rows agree the choice is easy; "
            "where they disagree, the measured row (when the card was probed) says who was right."))


def _inline(text: str) -> str:
    out = _html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _md_to_html(text: str) -> list[str]:
    """The Markdown subset ``markdown()`` writes (headings, bullets, tables, paragraphs) as HTML."""
    body, in_table = [], False
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-:"):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{_inline(line.lstrip('# '))}</h{level}>")
        elif line.startswith("- "):
            body.append(f"<p class='item'>• {_inline(line[2:])}</p>")
        elif line:
            body.append(f"<p>{_inline(line)}</p>")
    if in_table:
        body.append("</table>")
    return body


def figures(card: "LayerCard", plan: "Plan") -> dict[str, str]:
    """``{figure id: inline SVG}`` for the card's plots (``layerprof.output.plots``), ``plan`` marked; empty without layers."""
    from . import plots

    if not card.layers:
        return {}
    made = {"fig-share": plots.share_and_capture(card, plan.layers), "fig-pareto": plots.pareto(card, plan),
            "fig-conditioning": plots.conditioning(card), "fig-coupling": plots.coupling(card),
            "fig-selectors": plots.selector_ranks(card)}
    return {key: plots.svg(fig) for key, fig in made.items() if fig is not None}


STYLE = ("body{font-family:system-ui,sans-serif;max-width:72em;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;font-size:90%;margin:1em 0}"
         "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:first-child,th:first-child{text-align:left}"
         "figure{margin:1.5em 0}figcaption{font-size:90%;color:#444;max-width:60em}"
         "figure svg{max-width:100%;height:auto}p.item{margin:.2em 0}"
         ".recommendation{background:#fff4f4;border-left:4px solid #d62728;padding:.2em 1em}")


def html(card: "LayerCard", plan: "Plan | None" = None) -> str:
    """One self-contained HTML page: summary, recommendation, plots (inline SVG), tables.

    No scripts, stylesheets, fonts or images are fetched: the page renders offline. ``plan``
    as for ``markdown`` (placed once, shared by the text and the plots).
    """
    if plan is None and card.layers:
        plan = card.place(layers=card.default_layers())
    parts = sections(card, plan)
    body = _md_to_html(render(parts[:1]))
    rest = parts[1:]
    if rest and rest[0].key == "recommendation":
        body += ["<div class='recommendation'>"] + _md_to_html(render(rest[:1])) + ["</div>"]
        rest = rest[1:]
    svgs = figures(card, plan)
    if svgs:
        body.append("<h2>Plots</h2>")
        for key, title, caption in FIGURES:
            if key in svgs:
                body.append(f"<figure id='{key}'><h3>{_html.escape(title)}</h3>{svgs[key]}"
                            f"<figcaption>{_html.escape(caption)}</figcaption></figure>")
    body += _md_to_html(render(rest))
    title = _html.escape(f"Layer Card — {card.info.model.class_}")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>")
