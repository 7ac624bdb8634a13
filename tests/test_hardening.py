"""Hostile and careless use: one error type, strict card files, CLI checks before work, one sweep per model."""
import json
import math
import os
import stat
import threading

import pytest
import torch

import layerprof as lp
from conftest import assert_untouched, make_batches, make_model, snapshot
from layerprof.cli.commands import main
from layerprof.utils.errors import (BatchError, BudgetError, CardFormatError, ExportError, LayerprofError, PlacementError,
                                    ProfileError, UsageError)


@pytest.fixture(scope="module")
def card_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("card") / "card.json"
    lp.profile(make_model("llama"), make_batches(), rank=4, progress=False).save(path)
    return path


def test_every_error_is_a_layerprof_error_and_a_value_error():
    for cls in (ProfileError, BatchError, PlacementError, CardFormatError, ExportError, BudgetError, UsageError):
        assert issubclass(cls, LayerprofError) and issubclass(cls, ValueError)
    assert lp.CardFormatError is CardFormatError and lp.ProfileError is ProfileError


# ------------------------------------------------------------------ card files
def _mutated(card_path, tmp_path, edit, name="m.json"):
    data = json.loads(card_path.read_text())
    edit(data)
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("edit,message", [
    (lambda d: d["layers"].__setitem__(1, dict(d["layers"][0])), r"layer 0 appears twice"),
    (lambda d: d["modules"][0].__setitem__("d_in", float("nan")), r"modules\[0\]\.d_in"),
    (lambda d: d["modules"][0].__setitem__("d_in", True), r"modules\[0\]\.d_in"),
    (lambda d: d["layers"][0].__setitem__("score", "1e9"), r"layers\[0\]\.score"),
    (lambda d: d["layers"][0].__setitem__("energy", -1.0), r"layers\[0\]\.energy"),
    (lambda d: d["layers"][0].__setitem__("modules", 99), r"says 99 modules"),
    (lambda d: d["modules"][0].__setitem__("layer", 57), r"layers \[57\]"),
    (lambda d: d["modules"][1].__setitem__("name", d["modules"][0]["name"]), r"appears twice in modules"),
    (lambda d: d["modules"][0].__setitem__("name", "a\nlora_r: 99"), r"modules\[0\]\.name"),
    (lambda d: d["meta"]["settings"].__setitem__("score", "telepathy"), r"not a score this version knows"),
    (lambda d: d["meta"]["settings"].__setitem__("rank", 0), r"meta\.settings\.rank"),
    (lambda d: d["modules"][0].__setitem__("lora_params", 7), r"lora_params 7"),
    (lambda d: d["layers"].clear(), r"layers"),
    (lambda d: d["meta"].pop("model"), r"meta\.model: missing"),
    (lambda d: d["meta"].__setitem__("budget", {"steps": 0}), r"meta\.budget\.steps"),
    # Shares are in [0, 1] where there is signal (fuzzing found these loaded, placed and reported silently).
    (lambda d: d["layers"][0].__setitem__("gain_share", 1e300), r"gain_share must be in \[0, 1\]"),
    (lambda d: d["layers"][0].__setitem__("gain_share", float("nan")), r"gain_share is NaN although"),
    (lambda d: d["layers"][0].__setitem__("rank_capture", float("nan")), r"rank_capture must be a number in \[0, 1\]"),
    (lambda d: d["modules"][0].__setitem__("rank_capture", float("nan")), r"rank_capture must be a number in \[0, 1\]"),
    (lambda d: d["modules"][0].__setitem__("rank_capture", 1.5), r"modules\[0\].*rank_capture must be"),
    (lambda d: d["layers"][0].__setitem__("nfn", float("nan")), r"layer \d+ has a NaN nfn although"),
])
def test_invalid_cards_are_refused_in_one_line(card_path, tmp_path, edit, message):
    path = _mutated(card_path, tmp_path, edit)
    with pytest.raises(CardFormatError, match=message) as e:
        lp.LayerCard.load(path)
    assert "\n" not in str(e.value)


def test_a_report_draws_any_share_without_overflow(card_path):
    from dataclasses import replace

    card = lp.LayerCard.load(card_path)
    huge = lp.LayerCard(card.modules, [replace(l, gain_share=1e300) for l in card.layers], card.meta)
    assert "████████████████████" in huge.to_markdown()  # a full bar, not an OverflowError


def test_special_files_are_refused_without_reading_them(card_path, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(CardFormatError, match="not a regular file"):
        lp.LayerCard.load(fifo)  # would block forever if it were opened
    with pytest.raises(CardFormatError, match="is a directory"):
        lp.LayerCard.load(tmp_path)
    (tmp_path / "zero").symlink_to("/dev/zero")
    with pytest.raises(CardFormatError, match="not a regular file"):
        lp.LayerCard.load(tmp_path / "zero")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(CardFormatError, match="cannot be read"):
        lp.LayerCard.load(tmp_path / "loop")
    (tmp_path / "latin1.json").write_bytes(b'{"schema": "caf\xe9"}')
    with pytest.raises(CardFormatError, match="not UTF-8"):
        lp.LayerCard.load(tmp_path / "latin1.json")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CardFormatError, match="nests too deeply|not a layerprof card"):
        lp.LayerCard.load(tmp_path / "deep.json")
    (tmp_path / "digits.json").write_text('{"schema": ' + "9" * 5000 + "}")
    with pytest.raises(CardFormatError, match="not valid JSON"):
        lp.LayerCard.load(tmp_path / "digits.json")


def test_a_valid_card_round_trips_and_outputs_are_world_readable(card_path, tmp_path):
    card = lp.LayerCard.load(card_path)
    again = card.save(tmp_path / "again.json")
    assert lp.LayerCard.load(again).to_dict() == card.to_dict()
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(again).st_mode) == 0o666 & ~mask
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------ CLI arguments
@pytest.mark.parametrize("argv,message", [
    (["card", "--batch-size", "0"], "--batch-size must be an integer from 1 to 65536 (got 0)"),
    (["card", "--max-memory", "nan"], "--max-memory must be a finite number"),
    (["card", "--backend", "bogus"], "invalid choice: 'bogus'"),
    (["card", "--probe-steps", "-1"], "--probe-steps must be an integer from 0"),
    (["card", "--layers", "0"], "--layers must be an integer ≥ 1"),
    (["card", "--targets", "q_proj,,v_proj"], "an empty name"),
    (["bench", "--reps", "0"], "--reps must be an integer from 1"),
    (["validate", "--budgets", "0"], "--budgets must be an integer from 1 to"),
    (["place", "CARD", "--alpha", "nan"], "--alpha must be a finite number > 0"),
    (["place", "CARD", "--alpha", "-1"], "--alpha must be a finite number > 0"),
    (["place", "CARD", "--dropout", "2"], "--dropout must be a finite number ≥ 0 and < 1"),
    (["place", "CARD", "--k", "0"], "unrecognized arguments"),
    (["compare", "CARD", "CARD", "--k", "0"], "--k must be an integer ≥ 1"),
])
def test_bad_arguments_fail_at_parse_time_with_exit_2(card_path, capsys, argv, message):
    argv = [str(card_path) if a == "CARD" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_paths_are_checked_before_any_work(card_path, tmp_path, capsys):
    a_file = tmp_path / "f"
    a_file.write_text("x")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"caf\xe9 " * 100)
    cases = [
        (["card", "--out", str(a_file)], "is a file; name a directory"),
        (["card", "--out", str(a_file / "sub")], "runs through the file"),
        (["card", "--text", str(empty)], "is empty"),
        (["card", "--text", str(latin)], "is not UTF-8"),
        (["card", "--model", str(a_file)], "is a file but not a .gguf; pass a .gguf file or the model directory"),
        (["card", "--model", str(tmp_path)], "has no config.json, PEFT adapter_config.json or .gguf file"),
        (["report", str(tmp_path)], "is a directory; pass a file"),
        (["report", str(card_path), "--html", str(tmp_path)], "is a directory; name a file"),
        (["place", str(card_path), "--out", str(tmp_path)], "is a directory; name a file"),
        (["place", str(card_path), "--export", "peft", "--out", str(a_file)], "is a file; name a directory"),
        (["place", str(card_path), "--export", "axolotl"], "needs --out"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)


def test_card_layers_beyond_the_model_fail_before_the_sweep_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["card", "--layers", "99", "--out", str(out), "--batches", "1", "--no-progress"]) == 2
    assert "--layers 99 but the model has 8 layers" in capsys.readouterr().err
    assert not out.exists()
    assert main(["card", "--seq-len", "100000", "--out", str(out), "--batches", "1", "--no-progress"]) == 2
    assert "exceeds the model's 256 positions" in capsys.readouterr().err


def test_exports_refuse_what_their_consumers_would(card_path):
    plan = lp.LayerCard.load(card_path).place(layers=1)
    for kw, message in [({"r": 100000}, "exceeds the smallest dimension"), ({"r": True}, "positive int"),
                        ({"lora_alpha": float("nan")}, "lora_alpha"), ({"lora_alpha": -1.0}, "lora_alpha"),
                        ({"lora_dropout": 2.0}, "lora_dropout")]:
        with pytest.raises(ExportError, match=message):
            plan.lora_config(**kw)


# ------------------------------------------------------------------ one sweep per model
def test_a_second_thread_is_refused_and_the_first_card_is_right():
    model = make_model("llama")
    batches = make_batches()
    reference = lp.profile(make_model("llama"), batches, rank=4, progress=False)
    before = snapshot(model)
    inside, release = threading.Event(), threading.Event()

    def slow_loss(outputs, batch):
        inside.set()
        release.wait(10)
        return outputs.loss

    result = {}
    first = threading.Thread(target=lambda: result.setdefault(
        "card", lp.profile(model, batches, slow_loss, rank=4, progress=False)))
    first.start()
    assert inside.wait(10)
    during = snapshot(model)  # frozen by the first sweep
    with pytest.raises(ProfileError, match="already being profiled"):
        lp.profile(model, batches, rank=4, progress=False)
    with pytest.raises(ProfileError, match="already being profiled"):
        with lp.Profiler(model, rank=4):
            pass
    assert_untouched(model, during)  # the refused calls touched nothing
    release.set()
    first.join(30)
    assert_untouched(model, before)
    assert [l.resnorm for l in result["card"].layers] == pytest.approx([l.resnorm for l in reference.layers],
                                                                      rel=1e-12)


def test_profile_from_inside_a_loss_fn_is_refused_and_the_outer_card_is_right():
    model = make_model("llama")
    batches = make_batches()
    reference = lp.profile(make_model("llama"), batches, rank=4, progress=False)
    refused = []

    def nested(outputs, batch):
        try:
            lp.profile(model, batches, rank=4, progress=False)
        except ProfileError as e:
            refused.append(str(e))
        return outputs.loss

    card = lp.profile(model, batches, nested, rank=4, progress=False)
    assert len(refused) == len(batches) and "already being profiled" in refused[0]
    assert len(card.modules) == len(reference.modules)
    assert [m.resnorm for m in card.modules] == pytest.approx([m.resnorm for m in reference.modules], rel=1e-12)
    lp.profile(model, batches, rank=4, progress=False)  # released afterwards


def test_card_twice_gives_the_same_card():
    model = make_model("llama")
    with lp.Profiler(model, rank=4) as prof:
        for b in make_batches():
            model(**b).loss.backward()
    a, b = prof.card(), prof.card()
    assert [m.resnorm for m in a.modules] == [m.resnorm for m in b.modules]
    assert a.meta["data"] == b.meta["data"]


# ------------------------------------------------------------------ batches users really have
@pytest.mark.parametrize("edit,message", [
    (lambda b: b.__setitem__("labels", b["labels"][:, :-1]), r"batch 0: labels have shape \(3, 10\)"),
    (lambda b: b.__setitem__("input_ids", b["input_ids"].float()), r"batch 0: input_ids has dtype float32"),
    (lambda b: b["input_ids"].__setitem__((0, 0), 10 ** 6), r"batch 0: input_ids range over .*vocabulary"),
    (lambda b: b.__setitem__("attention_mask", torch.ones(3, 12, dtype=torch.long)),
     r"batch 0: attention_mask has shape \(3, 12\) but input_ids \(3, 11\)"),
    (lambda b: b["labels"].__setitem__((0, 0), 10 ** 6), r"batch 0: labels hold 1000000"),
])
def test_bad_batches_are_named_before_the_model_sees_them(edit, message):
    model = make_model("llama")
    before = snapshot(model)
    batches = make_batches()
    edit(batches[0])
    with pytest.raises(BatchError, match=message):
        lp.profile(model, batches, rank=4, progress=False)
    assert_untouched(model, before)


def test_a_model_error_is_wrapped_with_the_batch_and_chained():
    model = make_model("llama")
    before = snapshot(model)
    batches = make_batches()
    batches[1]["position_ids"] = torch.zeros(5, 5, dtype=torch.long)  # wrong shape: fails inside the model
    with pytest.raises(BatchError, match=r"batch 1: the model's forward failed on it") as e:
        lp.profile(model, batches, rank=4, progress=False)
    assert e.value.__cause__ is not None
    assert_untouched(model, before)


class _InPlace(torch.nn.Module):
    """b reads h; then h (a's output) is modified in place — before or after b read it."""

    def __init__(self, after: bool):
        super().__init__()
        self.a = torch.nn.Linear(6, 6)
        self.b = torch.nn.Linear(6, 6)
        self.after = after

    def forward(self, x):
        h = self.a(x)
        if not self.after:
            h.mul_(2)
        y = self.b(h)
        if self.after:
            h.mul_(2)  # b's input is no longer what b saw
        return y.sum() + h.sum()


def test_in_place_ops_on_module_outputs_work_as_without_the_profiler():
    # h.mul_(2) on a tapped module's output: allowed in plain PyTorch, so allowed in a sweep, and
    # the statistics are those of the values each module saw.
    torch.manual_seed(0)
    model, x = _InPlace(after=False), torch.randn(4, 6)
    with lp.Profiler(model, rank=2) as prof:
        model(x).backward()
    card = prof.card()
    # b's input is 2·a(x) and a's output gradient is 2·(∂L/∂h after the mul)
    h = (model.a(x) * 2).detach()
    assert card.module("b").energy == pytest.approx(float((h ** 2).sum(1).mean()), rel=1e-5)


def test_an_input_modified_in_place_after_a_tap_is_refused_by_name():
    model = _InPlace(after=True)
    with pytest.raises(ProfileError, match=r"input of b was modified in place"):
        with lp.Profiler(model, rank=2):
            model(torch.randn(4, 6)).backward()


def test_a_newline_in_the_card_path_cannot_add_yaml_keys(card_path, tmp_path):
    import yaml

    plan = lp.LayerCard.load(card_path).place(layers=1)
    from layerprof.output.export import export

    out = export(plan, "axolotl", tmp_path / "a.yml", source="evil\nlora_r: 999\n#")
    data = yaml.safe_load(out.read_text())
    assert data["lora_r"] == plan.ranks[plan.modules[0]] and "999" not in str(data.values())


@pytest.mark.parametrize("kw,message", [({"rank": True}, "rank must be a positive int"),
                                        ({"damping": 1e308}, "damping is relative"),
                                        ({"damping": float("nan")}, "damping is relative"),
                                        ({"sketch": True}, "sketch must be"),
                                        ({"max_tokens": True}, "max_tokens"),
                                        ({"coupling_batches": 0}, "coupling_batches")])
def test_profile_arguments_refuse_bools_and_absurd_values(kw, message):
    model = make_model("llama")
    before = snapshot(model)
    with pytest.raises(ProfileError, match=message):
        lp.profile(model, make_batches(), progress=False, **kw)
    assert_untouched(model, before)


def test_memory_messages_use_a_unit_that_shows_the_size():
    from layerprof.utils.memory import human_bytes

    assert human_bytes(3 * 2 ** 20) == "3.00 MiB" and human_bytes(5 * 2 ** 30) == "5.00 GiB" and human_bytes(12) == "12 B"
    model = make_model("llama")
    with pytest.raises(ProfileError, match=r"needs [0-9.]+ (KiB|MiB)"):
        lp.profile(model, make_batches(), progress=False, sketch=None, max_memory=1000)


# ------------------------------------------------------------------ PEFT-wrapped models
def _peft_model():
    from peft import LoraConfig, get_peft_model

    return get_peft_model(make_model("llama"), LoraConfig(r=4, target_modules="all-linear"))


def test_profile_and_profiler_see_a_peft_model_as_its_base_model():
    batches = make_batches()
    ref = lp.profile(make_model("llama"), batches, rank=4, progress=False)
    wrapped = _peft_model()
    for p in wrapped.parameters():  # a trained adapter: its output must not reach the statistics
        if "lora_B" in "".join(n for n, q in wrapped.named_parameters() if q is p):
            torch.nn.init.normal_(p)
    card = lp.profile(wrapped, batches, rank=4, progress=False)
    assert [m.name for m in card.modules] == [m.name for m in ref.modules]
    assert [m.resnorm for m in card.modules] == pytest.approx([m.resnorm for m in ref.modules], rel=1e-6)
    assert all(math.isfinite(m.nfn) for m in card.modules) and card.meta["peft_wrapped"]
    with lp.Profiler(wrapped, rank=4) as prof:
        for b in batches:
            wrapped(**b).loss.backward()
    names = [m.name for m in prof.card().modules]
    assert names == [m.name for m in ref.modules]
    # The plan configures the next get_peft_model as is.
    from peft import get_peft_model

    plan = card.place(layers=1)
    get_peft_model(make_model("llama"), plan.lora_config(r=4))


def test_weights_changing_during_profiling_are_reported():
    model = make_model("llama")
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    with lp.Profiler(model, rank=4) as prof:
        for b in make_batches():
            model(**b).loss.backward()
            opt.step()
            opt.zero_grad()
    with pytest.warns(UserWarning, match="changed while they were profiled"):
        card = prof.card()
    assert card.meta["weights_changed"]


def test_finalize_threads_follow_the_override_and_are_restored(monkeypatch):
    """LAYERPROF_SOLVE_THREADS sets finalize's threads (default: one on a busy CPU); torch's setting is restored."""
    import torch

    from layerprof.utils.memory import solve_threads

    before = torch.get_num_threads()
    monkeypatch.setenv("LAYERPROF_SOLVE_THREADS", "1")
    card = lp.profile(make_model("gpt2"), make_batches(n=2), rank=2, progress=False)
    assert card.meta["sweep"]["finalize_threads"] == 1 and torch.get_num_threads() == before
    assert card.meta["sweep"]["finalize_lapack"] == "scipy"  # the CPU default (layerprof.stats.linalg)
    assert "(1 thread, scipy's LAPACK)" in card.to_markdown()
    monkeypatch.setenv("LAYERPROF_SOLVE_THREADS", "two")
    with pytest.raises(ValueError, match="LAYERPROF_SOLVE_THREADS must be a positive int"):
        solve_threads()
    monkeypatch.delenv("LAYERPROF_SOLVE_THREADS")
    monkeypatch.setattr("os.getloadavg", lambda: (64.0, 64.0, 64.0))
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert solve_threads() == 1  # busy: one thread
    monkeypatch.setattr("os.getloadavg", lambda: (0.0, 0.0, 0.0))
    assert solve_threads() == torch.get_num_threads()  # idle: torch's own setting


def test_the_rows_and_their_schema_name_the_same_fields():
    """card.py's rows and schema.py's models list one set of columns, with the same optional ones: a column
    added to one side only fails here, and a field the schema does not know fails the load."""
    import dataclasses

    from layerprof.card.card import LayerRow, ModuleRow
    from layerprof.card.schema import LayerSchema, ModuleSchema

    for row, schema in ((ModuleRow, ModuleSchema), (LayerRow, LayerSchema)):
        fields = {f.name: f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                  for f in dataclasses.fields(row)}
        assert fields == {n: f.is_required() for n, f in schema.model_fields.items()}, row.__name__


def test_an_unknown_column_fails_the_load(card_path, tmp_path):
    path = _mutated(card_path, tmp_path, lambda d: d["layers"][0].update(new_column=1.0))
    with pytest.raises(lp.CardFormatError, match=r"layers\[0\]\.new_column: Extra inputs are not permitted"):
        lp.LayerCard.load(path)


def test_the_typed_metadata_is_the_dict(card_path):
    """card.info reads the metadata through the file schema's models: the same values, typed."""
    card = lp.LayerCard.load(card_path)
    info = card.info
    assert info.settings.score == card.meta["settings"]["score"] and info.settings.rank == card.meta["settings"]["rank"]
    assert info.model.class_ == card.meta["model"]["class"] and info.sweep.seconds == card.meta["sweep"]["seconds"]
    assert info.stability.kendall_tau == card.meta["stability"]["kendall_tau"]
    broken = lp.LayerCard(card.modules, card.layers, {**card.meta, "settings": {**card.meta["settings"], "rank": "8"}})
    with pytest.raises(lp.CardFormatError, match="settings.*rank"):
        broken.info
