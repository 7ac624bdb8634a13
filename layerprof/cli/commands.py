"""``layerprof`` command line: card, study, place, report, compare, bench, doctor (options in ``parser``,
argument types in ``args``; the study's command in ``study``)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..utils.errors import UsageError
from .parser import build_parser
from .study import cmd_study  # noqa: F401  (``_command`` finds each command here)
from ..model.loading import base_names, calibration_batches, check_against_model, load_model
from ..model.model_source import resolve as resolve_model

if TYPE_CHECKING:
    from ..pipeline.config import ProfileConfig


def profile_config(args) -> "ProfileConfig":
    """The ``ProfileConfig`` of `layerprof card`'s options (validated there, like every other door's)."""
    from ..card.budget import TrainingBudget
    from ..pipeline.config import ProfileConfig

    sketch = int(args.sketch) if args.sketch.isdigit() else {"auto": "auto", "none": None}[args.sketch.lower()]
    budget = None
    if not args.no_predict:
        budget = TrainingBudget(steps=args.steps, lr=args.lr, r=args.rank,
                                lora_alpha=args.lora_alpha if args.lora_alpha is not None else 2 * args.rank)
    return ProfileConfig(rank=args.rank, damping=args.damping, backend=args.backend, score=args.score, sketch=sketch,
                         max_memory=int(args.max_memory * 2 ** 30) if args.max_memory is not None else None,
                         coupling=args.coupling, rank_cross=args.rank_cross or None, max_tokens=args.max_tokens,
                         progress=not args.no_progress,
                         targets=args.targets, budget=budget)


def cmd_card(args) -> int:
    import layerprof as lp

    from ..output.outputs import write_outputs

    t0 = time.perf_counter()
    if args.probe_steps and args.model not in (None, "bundled"):
        raise UsageError("--probe-steps works on the bundled model for now (it needs held-out eval text); run "
                         "`layerprof study` style studies in Python for other models")
    model, tokenizer, family = load_model(args.model, args.dtype)
    check_against_model(model, targets=args.targets, layers=args.layers, seq_len=args.seq_len)
    batches = calibration_batches(args.text, model, tokenizer, batches=args.batches, batch_size=args.batch_size,
                                  seq_len=args.seq_len, family=family)
    card = lp.profile(model, batches, config=profile_config(args))
    if args.measure_cost:
        card = lp.measure_step_cost(model, batches, card)
    if family == "encoder":
        # Names relative to the encoder (encoder.layer.N...), so that the config applies to AutoModel
        # and to every AutoModelFor... of the family, not only to the masked LM profiled here.
        card = base_names(card, model)
    if args.probe_steps:
        from ..study.lora import StudyConfig, probe_layers
        from ..study.tasks import bundled_task

        task = bundled_task()
        card = card.with_probe(probe_layers(card, task, StudyConfig(steps=args.probe_steps, r=args.rank,
                                                                    lora_alpha=2 * args.rank)))
    # Everything is rendered before anything is written: a failure leaves no half-written --out.
    k = args.layers or card.default_layers()
    plan = card.place(layers=k)
    out = Path(args.out)
    # The base model as the user loads it: a GGUF source names its file, so the adapter config points at it.
    base = None if args.model in (None, "bundled") else resolve_model(args.model).label
    write_outputs(card, plan, out, r=args.rank, lora_alpha=2 * args.rank, source="layerprof card",
                  base_model_name_or_path=base)
    wall = time.perf_counter() - t0
    summary = {"card": str(out / "card.json"), "markdown": str(out / "card.md"), "html": str(out / "card.html"),
               "lora_config": str(out / "lora_config.json"), "placement": str(out / "placement.json"),
               "layers": plan.layers,
               "predicted_gain_fraction": plan.predicted_gain_fraction, "cost": plan.cost,
               "ranking": card.ranking(), "stability": card.meta["stability"], "rows": card.meta["data"]["rows"],
               "sweep_seconds": card.meta["sweep"]["seconds"], "wall_seconds": wall}
    if args.json:
        print(json.dumps(summary, indent=1, default=str))
    else:
        print(f"profiled {card.meta['model']['class']} on {summary['rows']:,} rows in "
              f"{summary['sweep_seconds']:.1f} s (total {wall:.1f} s)")
        print(f"layer ranking (best first): {card.ranking()}")
        from ..card.scores import score_label

        print(f"recommendation: adapt layers {plan.layers} -> {plan.predicted_gain_fraction:.0%} of the all-layer "
              f"score ({score_label(card.meta['settings']['score'])}) at {plan.cost:.0%} of full-LoRA training cost")
        if card.meta.get("step_cost"):
            sc = card.meta["step_cost"]
            print(f"cost model fitted to LoRA steps timed here ({len(sc['placements'])} placements × {sc['steps']} "
                  f"steps; largest misfit {sc['max_error']:.1%} of full LoRA's step)")
        print(f"wrote {summary['card']}, {summary['markdown']}, {summary['html']} (open it in a browser), "
              f"{summary['lora_config']}, {summary['placement']}")
    return 0


def cmd_place(args) -> int:
    from ..card.card import LayerCard
    from ..output.outputs import lora_config_dict, write_json

    if args.export != "json" and not args.out:
        raise UsageError(f"--export {args.export} needs --out (a directory for peft, a YAML file otherwise)")
    if args.out:
        from . import args as A

        check = A.output_dir("--out") if args.export == "peft" else A.output_file("--out")
        try:
            check(args.out)
        except argparse.ArgumentTypeError as e:
            raise UsageError(str(e)) from None
    card = LayerCard.load(args.card)
    kw = {"by": args.by, "rank": args.rank, "rank_target": args.rank_target}
    k_only = args.budget is not None or args.params is not None or args.target_gain is not None
    if args.spread and k_only:
        raise UsageError("--spread places k layers: use it with --layers (or no budget: the card's default k)")
    if args.coupled:
        if k_only or args.spread:
            raise UsageError("--coupled places k layers by the coupled greedy: use it with --layers (or no budget), "
                             "without --spread")
        kw["coupled"] = True
    if args.spread is not None:
        kw["spread"] = args.spread
    if args.target_gain is not None:
        plan = card.place(objective="cost", target_gain=args.target_gain, **kw)
    else:
        given = [x is not None for x in (args.layers, args.budget, args.params)]
        if sum(given) == 0:
            args.layers = card.default_layers()
        plan = card.place(layers=args.layers, budget=args.budget, params=args.params, **kw)
    r = args.rank or card.rank
    alpha = args.alpha if args.alpha is not None else 2 * r
    config = plan.lora_config(r=r, lora_alpha=alpha, lora_dropout=args.dropout)
    written = None
    if args.out and args.export == "json":
        written = Path(args.out)
        write_json(written, lora_config_dict(config))
    elif args.out:
        from ..output.export import export

        written = export(plan, args.export, args.out, source=str(args.card), r=r, lora_alpha=alpha,
                         lora_dropout=args.dropout)
    if args.json:
        data = plan.to_dict()
        data["lora_config"] = lora_config_dict(config)
        print(json.dumps(data, indent=1, default=str))
    else:
        print(f"layers {plan.layers}: {plan.predicted_gain_fraction:.1%} of the all-layer score, "
              f"{plan.cost:.1%} of full-LoRA training cost, {plan.cost_detail.adapter_params:,} adapter parameters, "
              f"{plan.cost_detail.adapted_modules} modules")
        print("pareto front (cost -> gain):")
        for p in plan.front:
            print(f"  {p['cost']:.3f} -> {p['gain_fraction']:.3f}  layers {p['layers']}")
        if written:
            print(f"wrote {written}")
    return 0


def cmd_report(args) -> int:
    from ..card.card import LayerCard

    card = LayerCard.load(args.card)
    if args.html:
        card.to_html(args.html)
        print(f"wrote {args.html}", file=sys.stderr)
    if args.json:
        print(json.dumps(card.to_dict(), indent=1))
    elif not args.html:  # --html writes the page and says where; the Markdown only when asked for nothing else
        print(card.to_markdown())
    return 0


def cmd_compare(args) -> int:
    from ..card.card import CardFormatError, LayerCard
    from ..card.compare import compare

    try:
        result = compare(LayerCard.load(args.card_a), LayerCard.load(args.card_b), k=args.k, force=args.force)
    except ValueError as e:
        if isinstance(e, CardFormatError):
            raise
        print(f"layerprof: error: {e}", file=sys.stderr)
        return 2
    if result["forced"]:
        # Loudly, and on stderr so that it also accompanies --json output.
        print("layerprof: WARNING: --force: comparing cards of different models, layer i of A with layer i of B: "
              + "; ".join(result["forced"]), file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"common layers: {len(result['layers'])}"
              + (f" (only in A: {result['only_in_a']}, only in B: {result['only_in_b']})"
                 if result["only_in_a"] or result["only_in_b"] else ""))
        print(f"layer ranking agreement: Kendall τ {result['kendall_tau']:+.2f}, Spearman {result['spearman']:+.2f}")
        print(f"top-{result['k']}: A {result['top_k_a']}, B {result['top_k_b']}, overlap {result['top_k_overlap']:.0%}")
        print("baselines τ: " + ", ".join(f"{c} {v:+.2f}" for c, v in result["baselines_kendall_tau"].items()
                                          if v is not None))
        print(f"same model: {result['same_model']}, same data: {result['same_data']}")
    return 0


def cmd_bench(args) -> int:
    from ..pipeline.benchmark import sweep_vs_plain, table

    if args.plan:
        from ..pipeline.profile_cost import plan_from_dir

        cost = plan_from_dir(args.plan, args.tokens, args.device, coupling=args.coupling)
        print(json.dumps(cost.to_dict(), indent=1) if args.json else cost.table())
        return 0

    model, tokenizer, family = load_model(args.model, args.dtype)
    batches = calibration_batches(args.text, model, tokenizer, batches=args.batches, batch_size=args.batch_size,
                                  family=family,
                                  seq_len=args.seq_len)
    if not args.json:
        print(f"timing plain forward+backward vs the layerprof sweep on {len(batches)} batches, "
              f"{args.reps} interleaved repetitions ...", file=sys.stderr)
    result = sweep_vs_plain(model, batches, reps=args.reps, backend=args.backend, coupling=args.coupling)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(table(result))
    return 0


def cmd_doctor(args) -> int:
    from .doctor import environment

    info = environment()
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        for k, v in info.items():
            if k not in ("backends", "devices"):
                print(f"{k}: {v if v is not None else 'not installed'}")
        for d in info["devices"]:
            print(f"device {d['device']}: " + ", ".join(f"{k} {v}" for k, v in d.items() if k != "device"))
        for n, s in info["backends"].items():
            print(f"backend {n}: {'available' if s['available'] else 'unavailable'} — {s['reason']}")
    return 0


ALIASES = {"validate": "study"}  # old command names that still work


def _command(name: str):
    """``layerprof <name>`` -> its ``cmd_<name>``, looked up when called (so tests may replace it)."""
    return globals()[f"cmd_{ALIASES.get(name, name)}"]


def main(argv: list[str] | None = None) -> int:
    from ..utils.errors import LayerprofError

    if argv is None:  # the `layerprof` command: this process is ours, so it keeps freed pages for reuse
        from ..utils.allocator import keep_freed_pages

        keep_freed_pages()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse printed the usage and the bad value; --help exits 0
        return e.code if isinstance(e.code, int) else 2
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the CLI draws its own progress; keep transformers' weight-loading bar off
    except ImportError:
        pass
    try:
        return _command(args.command)(args)
    except (LayerprofError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        # One line, no traceback: every LayerprofError message names its fix.
        print(f"layerprof: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
