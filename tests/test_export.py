"""Exports read back by their consumers: PEFT, Axolotl's config schema, LLaMA-Factory's arguments.

Axolotl and LLaMA-Factory are installed without their (multi-GB) dependencies by
``make install-test``; their config classes need only pydantic / the standard library.
Each test parses the export with the consumer's own class and then builds the
``peft.LoraConfig`` exactly as the consumer's loader does (the function is named beside
each mapping), so the adapted modules can be compared with the plan.
"""
import importlib.util
import json
import subprocess
import sys
from importlib import metadata

import pytest
import yaml

import layerprof as lp
from conftest import make_batches, make_model
from layerprof.output.export import ExportError, export, llamafactory_args
from test_peft import lora_modules


def _consumer_module(dist: str, relpath: str, name: str):
    try:
        path = metadata.distribution(dist).locate_file(relpath)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{dist} is not installed; `make install-test` installs it (pip install --no-deps {dist})")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def llama_card():
    return lp.profile(make_model("llama"), make_batches(), rank=4, progress=False)


def test_peft_adapter_config_loads_back(tmp_path, llama_card):
    from peft import LoraConfig, PeftConfig, get_peft_model

    plan = llama_card.place(layers=2, rank_target=0.6)
    path = export(plan, "peft", tmp_path / "adapter", r=4, lora_alpha=8, base_model_name_or_path="tiny-llama")
    assert path.name == "adapter_config.json"
    assert PeftConfig.from_pretrained(str(path.parent)).peft_type.value == "LORA"
    config = LoraConfig.from_pretrained(str(path.parent))
    assert config.base_model_name_or_path == "tiny-llama"
    assert lora_modules(get_peft_model(make_model("llama"), config)) == plan.ranks


def test_axolotl_yaml_validates_and_adapts_the_plan(tmp_path, llama_card):
    from peft import LoraConfig, get_peft_model

    schema = _consumer_module("axolotl", "axolotl/utils/schemas/peft.py", "axolotl_peft_schema")
    plan = llama_card.place(layers=2, rank_target=0.6)
    path = export(plan, "axolotl", tmp_path / "lora.yml", r=4, lora_alpha=8)
    cfg = schema.LoraConfig.model_validate(yaml.safe_load(path.read_text()))
    assert cfg.adapter == "lora"
    # axolotl.loaders.adapter._build_peft_lora_config / _build_lora_config_kwargs
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=cfg.lora_target_modules,
                        layers_to_transform=cfg.peft_layers_to_transform, lora_dropout=cfg.lora_dropout,
                        fan_in_fan_out=cfg.lora_fan_in_fan_out, bias="none",
                        rank_pattern=cfg.lora_rank_pattern or {}, alpha_pattern=cfg.lora_alpha_pattern or {})
    assert lora_modules(get_peft_model(make_model("llama"), config)) == plan.ranks


def test_axolotl_gpt2_sets_fan_in_fan_out(tmp_path):
    schema = _consumer_module("axolotl", "axolotl/utils/schemas/peft.py", "axolotl_peft_schema")
    plan = lp.profile(make_model("gpt2"), make_batches(), rank=4, progress=False).place(layers=1)
    cfg = schema.LoraConfig.model_validate(yaml.safe_load(export(plan, "axolotl", tmp_path / "a.yml").read_text()))
    assert cfg.lora_fan_in_fan_out is True


def test_llamafactory_arguments_parse_and_adapt_the_plan(tmp_path, llama_card):
    from peft import LoraConfig, TaskType, get_peft_model

    args_mod = _consumer_module("llamafactory", "llamafactory/hparams/finetuning_args.py", "lf_finetuning_args")
    plan = llama_card.place(layers=2)
    path = export(plan, "llamafactory", tmp_path / "lf.yaml", r=4, lora_alpha=8)
    fa = args_mod.FinetuningArguments(**yaml.safe_load(path.read_text()))
    assert fa.finetuning_type == "lora" and fa.lora_rank == 4 and fa.lora_alpha == 8
    # llamafactory.model.adapter._setup_lora_tuning
    config = LoraConfig(task_type=TaskType.CAUSAL_LM, inference_mode=False, r=fa.lora_rank,
                        target_modules=fa.lora_target, lora_alpha=fa.lora_alpha, lora_dropout=fa.lora_dropout,
                        use_rslora=fa.use_rslora, use_dora=fa.use_dora, modules_to_save=fa.additional_target)
    assert lora_modules(get_peft_model(make_model("llama"), config)) == plan.ranks
    # The command-line form carries the same values.
    argv = llamafactory_args(plan, r=4, lora_alpha=8)
    pairs = dict(zip(argv[::2], argv[1::2]))
    assert pairs["--lora_target"] == ",".join(sorted(plan.modules)) and pairs["--lora_rank"] == "4"


def test_llamafactory_refuses_per_module_ranks_and_writes_nothing(tmp_path, llama_card):
    plan = llama_card.place(layers=2, rank_target=0.6)
    assert len(set(plan.ranks.values())) > 1
    with pytest.raises(ExportError, match="one LoRA rank"):
        export(plan, "llamafactory", tmp_path / "lf.yaml", r=4)
    assert not (tmp_path / "lf.yaml").exists()


def test_fractional_alpha_is_refused_for_integer_consumers(tmp_path, llama_card):
    plan = llama_card.place(layers=1)
    with pytest.raises(ExportError, match="integer lora_alpha"):
        export(plan, "axolotl", tmp_path / "a.yml", r=4, lora_alpha=6.5)
    with pytest.raises(ExportError, match="unknown export format"):
        export(plan, "deepspeed", tmp_path / "x")


def test_cli_place_export(tmp_path, llama_card):
    card_path = llama_card.save(tmp_path / "card.json")
    for fmt, out in (("peft", tmp_path / "peft"), ("axolotl", tmp_path / "ax.yml"),
                     ("llamafactory", tmp_path / "lf.yaml")):
        r = subprocess.run([sys.executable, "-m", "layerprof.cli", "place", str(card_path), "--layers", "2",
                            "--export", fmt, "--out", str(out)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert "wrote" in r.stdout
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert "lora_target_modules" in yaml.safe_load((tmp_path / "ax.yml").read_text())
    r = subprocess.run([sys.executable, "-m", "layerprof.cli", "place", str(card_path), "--export", "axolotl"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "needs --out" in r.stderr
    r = subprocess.run([sys.executable, "-m", "layerprof.cli", "place", str(card_path), "--rank-target", "0.6",
                        "--export", "llamafactory", "--out", str(tmp_path / "bad.yaml")], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "one LoRA rank" in r.stderr and not (tmp_path / "bad.yaml").exists()


@pytest.mark.parametrize("family, task", [("llama", "CAUSAL_LM"), ("gpt2", "CAUSAL_LM"), ("bert", None)])
def test_exports_carry_task_type_and_base_model_and_apply(tmp_path, family, task):
    """task_type and base_model_name_or_path come from the card's model; PEFT reads them back and
    get_peft_model accepts the config on that model class (BertForMaskedLM: PEFT has no MLM task)."""
    from peft import LoraConfig, get_peft_model

    from conftest import make_batches, make_model

    card = lp.profile(make_model(family), make_batches(n=2), rank=2, progress=False)
    card.meta["model"]["name_or_path"] = "org/tiny-" + family
    plan = card.place(layers=1)
    export(plan, "peft", tmp_path / "adapter", r=2, lora_alpha=4)
    config = LoraConfig.from_pretrained(str(tmp_path / "adapter"))
    assert (config.task_type, config.base_model_name_or_path) == (task, "org/tiny-" + family)
    peft_model = get_peft_model(make_model(family), config)
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_modules() if n.endswith("lora_A")}
    assert {n.split("base_model.model.", 1)[-1] for n in adapted} == set(plan.modules)


def test_task_type_follows_the_model_class():
    from layerprof.output.export import task_type

    assert [task_type(c) for c in ("LlamaForCausalLM", "GPT2LMHeadModel", "T5ForConditionalGeneration",
                                   "BertForSequenceClassification", "BertForTokenClassification",
                                   "BertForQuestionAnswering", "BertModel", "BertForMaskedLM", None)] == [
        "CAUSAL_LM", "CAUSAL_LM", "SEQ_2_SEQ_LM", "SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION",
        None, None]
