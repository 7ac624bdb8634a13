"""Property-based fuzzing (hypothesis) of what users hand layerprof: card files, CLI arguments, batches.

The properties:
* a mutated card either fails to load with one ``CardFormatError`` line, or it loads and then
  places, reports (Markdown and HTML) and exports with sane results — never a raw exception,
  never garbage (a plan's layers are distinct layers of the card, its cost and gain fractions
  are finite and in range, a written config names only modules of the card);
* through the CLI (``report``, ``place``, ``compare``) the same cards give exit 0 or exit 2
  with one line on stderr, never a traceback;
* CLI arguments of every command fail at parse time with exit 2 or parse into valid values;
* a batch of any shape, dtype or content either profiles or raises a ``LayerprofError``, and
  the model is bitwise untouched either way.

Examples per target: ``LAYERPROF_FUZZ_EXAMPLES`` (default 40 in the test suite; ``make fuzz``
runs 2,000 per target and prints the counts).
"""
import copy
import json
import math
import os
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import layerprof as lp
from conftest import make_batches, make_model
from layerprof.cli.commands import main
from layerprof.utils.errors import CardFormatError, LayerprofError

EXAMPLES = int(os.environ.get("LAYERPROF_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES < 1000,
                suppress_health_check=list(HealthCheck))
COUNTS: Counter = Counter()


@pytest.fixture(scope="module")
def base_card(tmp_path_factory):
    model = make_model("gpt2")
    card = lp.profile(model, make_batches(n=4), rank=4, progress=False, coupling=True,
                      budget=lp.TrainingBudget(steps=3, lr=1e-3, r=4, lora_alpha=8))
    path = tmp_path_factory.mktemp("fuzz") / "card.json"
    card.save(path)
    return json.loads(path.read_text())


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    if COUNTS:
        print("\nfuzz counts: " + ", ".join(f"{k} {v}" for k, v in sorted(COUNTS.items())))


# ---------------------------------------------------------------------- mutations
ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.sampled_from([0, -1, 1, 10 ** 6]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0]),
    st.text(max_size=12), st.sampled_from(["1e9", "", "nan", "a\nb: 1", "layers.0"]),
    st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node[:4]):  # the first few rows stand for all
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated_cards(draw, base):
    card = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(card) if p]
        path = draw(st.sampled_from(paths))
        parent = card
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        action = draw(st.sampled_from(["replace", "replace", "delete", "duplicate", "swap_type"]))
        if action == "delete":
            del parent[key]
        elif action == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
        elif action == "swap_type" and isinstance(parent[key], (int, float)) and not isinstance(parent[key], bool):
            parent[key] = str(parent[key])
        else:
            parent[key] = draw(ODD_VALUES)
    return card


def _write(tmp_path, data, name="card.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data, allow_nan=True), encoding="utf-8")
    return str(path)


def _check_plan(card, plan):
    ids = {l.layer for l in card.layers}
    assert len(set(plan.layers)) == len(plan.layers) and set(plan.layers) <= ids
    assert set(plan.modules) <= {m.name for m in card.modules}
    for v in (plan.cost, plan.predicted_gain_fraction):
        assert math.isfinite(v) and -1e-9 <= v <= 1 + 1e-9, v


def _exercise(card, tmp_path):
    """Everything a loaded card promises: placement, reports, exports."""
    from layerprof.output.export import export

    k = card.default_layers()
    for kw in ({"layers": k}, {"budget": 0.6}, {"objective": "cost", "target_gain": 0.5}):
        try:
            plan = card.place(**kw)
        except LayerprofError:
            continue  # a request this card cannot meet, said in one line
        _check_plan(card, plan)
        for fmt in ("peft", "axolotl"):
            try:
                export(plan, fmt, tmp_path / f"out-{fmt}", source="fuzz")
            except LayerprofError:
                pass
    text = card.to_markdown()
    assert "nan%" not in text and "inf%" not in text
    card.to_html()


# ---------------------------------------------------------------------- targets
def test_mutated_cards_through_the_api(base_card, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")

    @FUZZ
    @given(data=mutated_cards(base_card))
    def run(data):
        path = _write(tmp, data)
        try:
            card = lp.LayerCard.load(path)
        except CardFormatError as e:
            assert "\n" not in str(e)
            COUNTS["api cards refused"] += 1
            return
        _exercise(card, tmp)
        COUNTS["api cards accepted"] += 1

    run()


def test_mutated_cards_through_the_cli(base_card, tmp_path_factory, capsys):
    tmp = tmp_path_factory.mktemp("cli")
    good = _write(tmp, base_card, "good.json")

    @FUZZ
    @given(data=mutated_cards(base_card), command=st.sampled_from(["report", "place", "place-yaml", "compare"]))
    def run(data, command):
        path = _write(tmp, data)
        argv = {"report": ["report", path, "--html", str(tmp / "r.html")],
                "place": ["place", path, "--json"],
                "place-yaml": ["place", path, "--export", "axolotl", "--out", str(tmp / "a.yml")],
                "compare": ["compare", good, path]}[command]
        capsys.readouterr()
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc in (0, 2) and "Traceback" not in err
        if rc == 2:
            assert len([l for l in err.splitlines() if l.startswith("layerprof: error:")]) == 1
        COUNTS[f"cli cards exit {rc}"] += 1

    run()


FLAG_VALUES = st.one_of(st.sampled_from(["0", "-1", "1", "2", "nan", "inf", "-inf", "1e308", "", " ", "abc", "0.5",
                                         "100000", "1e-9", "3.7", "/", "/dev/zero", "/nonexistent/x"]),
                        st.integers(-10 ** 6, 10 ** 6).map(str), st.floats().map(str))
COMMAND_FLAGS = {
    "card": ["--rank", "--damping", "--steps", "--lr", "--lora-alpha", "--batches", "--batch-size", "--seq-len",
             "--max-tokens", "--layers", "--backend", "--sketch", "--max-memory", "--probe-steps", "--score",
             "--targets", "--text", "--model", "--out", "--dtype"],
    "study": ["--task", "--k", "--budgets", "--rank", "--lr", "--seeds", "--random-draws", "--out"],
    "bench": ["--batches", "--batch-size", "--seq-len", "--reps", "--backend", "--dtype", "--text", "--model",
              "--plan", "--tokens", "--device"],
    "place": ["--layers", "--budget", "--params", "--target-gain", "--rank", "--rank-target", "--alpha",
              "--dropout", "--by", "--export"],
}


def test_cli_arguments_fail_at_parse_time_or_parse_to_valid_values(base_card, tmp_path_factory, capsys,
                                                                    monkeypatch):
    import layerprof.cli.commands as cli

    tmp = tmp_path_factory.mktemp("args")
    good = _write(tmp, base_card, "good.json")
    ran = []
    # card / study / bench would sweep or train: stop right after parsing (and the checks that run
    # before any work), recording that the parsed values are sane.
    for name in ("cmd_card", "cmd_study", "cmd_bench"):
        monkeypatch.setattr(cli, name, lambda args: ran.append(args) or 0)

    @FUZZ
    @given(command=st.sampled_from(sorted(COMMAND_FLAGS)), data=st.data())
    def run(command, data):
        flags = data.draw(st.lists(st.sampled_from(COMMAND_FLAGS[command]), min_size=1, max_size=3, unique=True))
        argv = [command] + ([good] if command == "place" else [])
        for f in flags:
            argv += [f, data.draw(FLAG_VALUES)]
        if command == "place":
            argv += ["--out", str(tmp / "o.json")]
        capsys.readouterr()
        ran.clear()
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc in (0, 2) and "Traceback" not in err, (argv, err)
        for args in ran:  # parsed: every numeric value is finite and in its range
            for key in ("rank", "batches", "batch_size", "seq_len", "steps", "reps", "seeds", "layers", "k"):
                v = getattr(args, key, None)
                assert v is None or (isinstance(v, int) and v >= 1), (key, v)
            for key in ("lr", "damping", "max_memory", "lora_alpha"):
                v = getattr(args, key, None)
                assert v is None or (math.isfinite(v) and v >= 0), (key, v)
        COUNTS[f"cli args exit {rc}"] += 1

    run()


BATCH_KEYS = st.sampled_from(["input_ids", "attention_mask", "labels", "position_ids", "token_type_ids", "junk"])


@st.composite
def odd_batches(draw):
    batch = {k: v.clone() for k, v in make_batches(n=1)[0].items()}
    for _ in range(draw(st.integers(1, 3))):
        key = draw(BATCH_KEYS)
        kind = draw(st.sampled_from(["shape", "dtype", "values", "delete", "scalar"]))
        base = batch.get(key)
        if not isinstance(base, torch.Tensor):
            base = torch.randint(0, 40, (3, 11))
        if kind == "delete":
            batch.pop(key, None)
        elif kind == "shape":
            shape = tuple(draw(st.lists(st.integers(0, 13), min_size=1, max_size=3)))
            batch[key] = torch.randint(0, 40, shape)
        elif kind == "dtype":
            batch[key] = base.to(draw(st.sampled_from([torch.float32, torch.bool, torch.int8, torch.float16])))
        elif kind == "values":
            batch[key] = torch.full(base.shape, draw(st.sampled_from([-5, -100, 0, 10 ** 6, 2 ** 31 - 1])))
        else:
            batch[key] = draw(st.sampled_from([None, 3, "text", [1, 2]]))
    return batch


def test_odd_batches_profile_or_refuse_and_leave_the_model_untouched():
    from conftest import assert_untouched, snapshot

    model = make_model("llama")
    snap = snapshot(model)

    @FUZZ
    @given(batch=odd_batches())
    def run(batch):
        try:
            lp.profile(model, [batch, make_batches(n=1, seed=3)[0]], rank=2, progress=False)
            COUNTS["batches profiled"] += 1
        except LayerprofError as e:
            assert str(e).strip()
            COUNTS["batches refused"] += 1
        assert_untouched(model, snap)

    run()


def test_two_threads_on_one_model_trials():
    """One thread profiles, the other is refused; the model is untouched and the card right, every trial."""
    import threading

    from conftest import assert_untouched, snapshot

    trials = max(3, EXAMPLES // 20)  # 100 under make fuzz
    batches = make_batches()
    reference = lp.profile(make_model("llama"), batches, rank=4, progress=False)
    model = make_model("llama")
    snap = snapshot(model)
    ok = 0
    for _ in range(trials):
        started, results = threading.Event(), {}

        def slow(outputs, batch):
            started.set()
            return outputs.loss

        def first():
            results["card"] = lp.profile(model, batches, slow, rank=4, progress=False)

        def second():
            started.wait(10)
            try:
                lp.profile(model, batches, rank=4, progress=False)
                results["second"] = "ran"
            except lp.ProfileError:
                results["second"] = "refused"

        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert_untouched(model, snap)
        card = results["card"]
        assert [m.resnorm for m in card.modules] == pytest.approx([m.resnorm for m in reference.modules], rel=1e-12)
        # The second either was refused mid-sweep or ran after the first had finished; never both at once.
        assert results["second"] in ("refused", "ran")
        ok += results["second"] == "refused"
    COUNTS["thread trials"] += trials
    COUNTS["thread trials refused mid-sweep"] += ok
