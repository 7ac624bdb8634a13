"""The command line end to end on the bundled default (few batches, so seconds)."""
import json
import subprocess
import sys

import pytest

from layerprof.cli.commands import main


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("card")
    assert main(["card", "--batches", "6", "--out", str(out), "--no-progress"]) == 0
    return out


def test_card_writes_card_markdown_and_lora_config(out_dir):
    import layerprof as lp

    card = lp.LayerCard.load(out_dir / "card.json")
    assert card.meta["model"]["name_or_path"] == "layerprof/shakespeare-gpt2"
    assert len(card.layers) == 8 and card.meta["data"]["batches"] == 6
    assert "# Layer Card" in (out_dir / "card.md").read_text()
    assert (out_dir / "card.html").read_text().count("<svg") >= 4
    cfg = json.loads((out_dir / "lora_config.json").read_text())
    plan = card.place(layers=2)
    assert sorted(cfg["target_modules"]) == sorted(plan.modules)


def test_lora_config_json_loads_into_peft(out_dir):
    from peft import LoraConfig, get_peft_model

    from layerprof.model.bundled import load_default_model

    cfg = json.loads((out_dir / "lora_config.json").read_text())
    config = LoraConfig(**{k: v for k, v in cfg.items() if k in LoraConfig.__dataclass_fields__})
    model = get_peft_model(load_default_model(), config)
    adapted = {n for n, m in model.base_model.model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == set(cfg["target_modules"])


def test_place_and_report(out_dir, tmp_path, capsys):
    assert main(["place", str(out_dir / "card.json"), "--target-gain", "0.5", "--json",
                 "--out", str(tmp_path / "cfg.json")]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["predicted_gain_fraction"] >= 0.5 and plan["objective"] == "cost"
    assert json.loads((tmp_path / "cfg.json").read_text())["target_modules"]
    assert main(["place", str(out_dir / "card.json"), "--budget", "0.8"]) == 0
    assert "pareto front" in capsys.readouterr().out
    assert main(["report", str(out_dir / "card.json")]) == 0
    assert "## Layers" in capsys.readouterr().out
    assert main(["report", str(out_dir / "card.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["schema"] == "layerprof.card/1"


def test_place_spread(out_dir, capsys):
    import layerprof as lp

    card = lp.LayerCard.load(out_dir / "card.json")
    assert main(["place", str(out_dir / "card.json"), "--layers", "2", "--spread", "--by", "act_norm", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    rows = {l.layer: l.act_norm for l in card.layers}
    assert plan["layers"] == [max([0, 1, 2, 3], key=rows.get), max([4, 5, 6, 7], key=rows.get)]
    assert main(["place", str(out_dir / "card.json"), "--budget", "0.5", "--spread"]) == 2
    assert "--spread places k layers" in capsys.readouterr().err


def test_card_json_summary(tmp_path, capsys):
    assert main(["card", "--batches", "2", "--out", str(tmp_path), "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] > 0 and len(summary["layers"]) == 2


def test_card_takes_the_finetune_budget(tmp_path, capsys):
    import layerprof as lp

    assert main(["card", "--batches", "3", "--out", str(tmp_path), "--no-progress", "--json", "--steps", "30",
                 "--lr", "1e-3", "--lora-alpha", "4", "--score", "sim_gain"]) == 0
    summary = json.loads(capsys.readouterr().out)
    card = lp.LayerCard.load(tmp_path / "card.json")
    b = card.meta["budget"]
    assert (b["steps"], b["lr"], b["r"], b["lora_alpha"]) == (30, 1e-3, 8, 4.0)
    assert card.meta["settings"]["score"] == "sim_gain" and card.meta["warmup"]["steps"] == 2
    best = max(card.layers, key=lambda l: l.sim_gain).layer
    assert summary["ranking"][0] == best and best in summary["layers"]
    assert main(["card", "--batches", "2", "--out", str(tmp_path / "plain"), "--no-progress", "--no-predict"]) == 0
    assert "budget" not in lp.LayerCard.load(tmp_path / "plain" / "card.json").meta


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["report", str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["place", str(tmp_path / "none.json")]) == 2


def test_console_script_help():
    res = subprocess.run([sys.executable, "-m", "layerprof.cli", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "card" in res.stdout and "examples:" in res.stdout


def test_card_from_a_local_model_directory(tmp_path):
    # A user's model saved with save_pretrained, loaded offline; no tokenizer there, so text is
    # fed as bytes (the vocabulary covers all 256 byte values).
    from transformers import LlamaConfig, LlamaForCausalLM

    import layerprof as lp

    LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(tmp_path / "m")
    text = tmp_path / "t.txt"
    text.write_text("Some calibration text.\n\n" * 200)
    assert main(["card", "--model", str(tmp_path / "m"), "--text", str(text), "--batches", "3", "--batch-size", "2",
                 "--seq-len", "32", "--out", str(tmp_path / "o"), "--no-progress", "--rank", "4"]) == 0
    card = lp.LayerCard.load(tmp_path / "o" / "card.json")
    assert [l.layer for l in card.layers] == [0, 1, 2, 3] and card.meta["model"]["class"] == "LlamaForCausalLM"


@pytest.mark.parametrize("command", ["card", "study", "place", "report", "compare", "bench", "doctor"])
def test_every_command_help_has_examples(command, capsys):
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"layerprof {command}" in text.split("examples:", 1)[1]


def test_validate_is_the_study_command_under_its_old_name(capsys):
    assert main(["validate", "--help"]) == 0
    assert "placement study" in capsys.readouterr().out


def test_progress_bar_shows_rows_per_second_and_eta(tmp_path, capsys):
    assert main(["card", "--batches", "3", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    # tqdm: "layerprof sweep:  33%|...| 703/2.11k [00:00<00:01, 4.5krows/s, batches=1/3]" (percent and ETA)
    assert "layerprof sweep" in err and "rows/s" in err and "%|" in err and "<" in err


def test_doctor_json_lists_devices_and_backends(capsys):
    assert main(["doctor", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["devices"][0]["device"] == "cpu"
    assert info["backends"]["torch"]["available"] is True
    assert info["peft"] and info["transformers"]


def test_bench_interleaves_the_passes_and_reports_medians(monkeypatch):
    # A fake clock: each pass advances it by a known amount, so the medians and their order are exact.
    from types import SimpleNamespace

    from layerprof.pipeline import benchmark

    clock, calls = [0.0], []
    monkeypatch.setattr(benchmark, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    sweep_costs = iter([9.0, 2.0, 5.0, 3.0])  # the first is the warm-up, never counted

    def plain():
        calls.append("plain")
        clock[0] += 1.0

    def sweep():
        calls.append("sweep")
        clock[0] += next(sweep_costs)

    med = benchmark.interleaved({"plain": plain, "sweep": sweep}, reps=3, warmup=1)
    assert calls == ["plain", "sweep"] * 4
    assert med == {"plain": 1.0, "sweep": 3.0}


def test_bench_times_the_bundled_model_on_its_rows(capsys):
    assert main(["bench", "--batches", "2", "--reps", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    from layerprof.model.bundled import calibration_text, text_batches

    batches = text_batches(calibration_text(), batch_size=8, seq_len=128, n_batches=2)
    # rows = the non-padding tokens of exactly the batches the bench was asked for
    assert r["rows"] == sum(int(b["attention_mask"].sum()) for b in batches) and r["batches"] == 2
    assert r["backend"] in ("cpp", "torch")
    assert r["plain_seconds"] > 0 and r["sweep_seconds"] > 0
    assert r["coupling_seconds"] is None  # the default profile has no coupling pass
    assert main(["bench", "--batches", "2", "--reps", "1", "--coupling", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["coupling_seconds"] > 0  # asked for: its own figure


def test_bench_table_without_coupling_says_so(capsys):
    assert main(["bench", "--batches", "2", "--reps", "1", "--no-coupling"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| sweep ("))
    assert "coupling s" in out and row.split("|")[6].strip() == "–"


def test_card_with_a_memory_budget_runs_several_sweeps(tmp_path, capsys):
    # ~10 MB of dense statistics and tap inputs per layer of the bundled model: 30 MiB fits a few
    # layers per sweep, so the card comes from several sweeps and says so.
    assert main(["card", "--batches", "2", "--out", str(tmp_path), "--no-progress", "--sketch", "none",
                 "--max-memory", "0.03"]) == 0
    import layerprof as lp

    card = lp.LayerCard.load(tmp_path / "card.json")
    assert card.meta["memory_plan"]["sweeps"] > 1 and card.meta["memory_plan"]["mode"] == "dense"
    assert len(card.layers) == 8
    assert main(["card", "--sketch", "lots"]) == 2
    assert "--sketch takes auto, none or a positive int" in capsys.readouterr().err


def test_bench_plan_models_the_cost_before_anything_runs(tmp_path, capsys):
    """`bench --plan DIR`: FLOPs of the plain pass, the sweep and finalize from the config alone (meta device)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "m")
    assert main(["bench", "--plan", str(tmp_path / "m"), "--tokens", "1000", "--device", "cpu", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    h, i, kv = 32, 64, 2 * 32 // 4  # k/v project to num_key_value_heads × head_dim
    per_layer = 2 * (h * h + 2 * h * kv + h * h + 2 * h * i + i * h)  # q, k, v, o, gate, up, down
    assert r["modules"] == 14 and r["distinct_inputs"] == 2 * 4  # q/k/v share, gate/up share; o, down alone
    assert r["plain_flops"] == 1000 * 2 * (2 * per_layer + 2 * h * 300)  # fwd + input-grad bwd, with the head
    assert r["sweep_seconds"] > r["plain_seconds"] > 0 and r["finalize_share_of_sweep"] > 0
    # finalize's float64 working set: the largest input's Σ and L (down_proj's d_in = 64), one module's C and halves.
    assert r["finalize_bytes"] == 8 * (2 * i * i + 4 * h * i)
    # The default score's rank-r cross term: per module and half, the Gram of the short side m (2·m²·n), its
    # eigendecomposition (4·m³) and the two rank-8 projections (4·8·m·n).
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)] * 2
    cross = sum(2 * (2 * min(a, b) ** 2 * max(a, b) + 4 * min(a, b) ** 3 + 4 * 8 * a * b) for a, b in shapes)
    assert r["finalize_flops"]["rank-r cross"] == pytest.approx(cross)
    # Finalize at the full FP64 peak (a floor) and the tokens from which it is ≤ 10% of the sweep (linear in tokens).
    fin = sum(r["finalize_flops"].values())
    assert r["finalize_floor_seconds"] == pytest.approx(fin / 20e9) and r["finalize_floor_seconds"] <= r["finalize_seconds"]
    assert r["tokens_for_finalize_share"] == pytest.approx(1000 * r["finalize_seconds"] / (0.1 * r["sweep_seconds"]))
    # The coupling pass only when asked (the default placement does not need it), as profile() does.
    assert r["coupling_flops"] == 0 and r["coupling_seconds"] == 0
    assert main(["bench", "--plan", str(tmp_path / "m"), "--tokens", "1000", "--device", "cpu", "--json",
                 "--coupling"]) == 0
    r = json.loads(capsys.readouterr().out)
    # Two forwards per layer over min(tokens, 2048), plus the corrections.
    forwards = 2 * 2 * 1000 * (2 * per_layer + 2 * h * 300)
    assert forwards < r["coupling_flops"] < forwards + 1e6 and r["coupling_seconds"] > 0
    assert main(["bench", "--plan", str(tmp_path / "m"), "--tokens", "1000"]) == 0
    out = capsys.readouterr().out
    assert "finalize =" in out and "not asked (coupling=True adds it)" in out and "At the full FP64 peak" in out


def test_card_measures_the_step_cost_on_request(tmp_path, capsys):
    import layerprof as lp

    assert main(["card", "--batches", "2", "--out", str(tmp_path), "--no-progress", "--no-predict",
                 "--no-coupling", "--measure-cost"]) == 0
    assert "cost model fitted to LoRA steps timed here (5 placements" in capsys.readouterr().out
    card = lp.LayerCard.load(tmp_path / "card.json")
    sc = card.meta["step_cost"]
    assert [p["layers"] for p in sc["placements"]][0] == list(range(8)) and sc["steps"] == 10
    assert "measured (fitted to LoRA steps timed on this machine) training cost" in (tmp_path / "card.md").read_text()
