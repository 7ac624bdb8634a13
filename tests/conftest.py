"""Tiny models built from transformers configs (no hub access) and helpers shared by tests."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Triton kernels run on the CPU under the interpreter; the flag must be set before they are
# defined (first import of layerprof.kernels), so it is set here, first. On a GPU machine
# (LAYERPROF_TEST_TRITON_GPU=1) the kernels are compiled for the device instead.
if os.environ.get("LAYERPROF_TEST_TRITON_GPU") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(min(2, os.cpu_count() or 1))

VOCAB = 97  # odd on purpose


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=24, n_layer=3, n_head=2,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                      bos_token_id=0, eos_token_id=0))


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        bos_token_id=0, eos_token_id=0, pad_token_id=0))


def _qwen3():
    from transformers import Qwen3Config, Qwen3ForCausalLM
    return Qwen3ForCausalLM(Qwen3Config(vocab_size=VOCAB, hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                        max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=0))


def _bert():
    from transformers import BertConfig, BertForMaskedLM
    return BertForMaskedLM(BertConfig(vocab_size=VOCAB, hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                                      num_attention_heads=2, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0, pad_token_id=0))


# name -> (factory, modules per block)
MODELS = {"gpt2": (_gpt2, 4), "llama": (_llama, 7), "qwen3": (_qwen3, 7), "bert": (_bert, 6)}


def make_model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = MODELS[name][0]()
    return model.eval()


def make_batches(n: int = 3, batch: int = 3, seq: int = 11, seed: int = 1, pad_to: int | None = None):
    """Causal-LM batches with right padding (holes in the mask) and labels -100 at padding."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, VOCAB, (batch, seq), generator=g)
        lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=g)
        lengths[0] = seq
        mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
        if pad_to is not None and pad_to > seq:
            extra = pad_to - seq
            ids = torch.cat([ids, torch.zeros(batch, extra, dtype=ids.dtype)], 1)
            mask = torch.cat([mask, torch.zeros(batch, extra, dtype=mask.dtype)], 1)
        ids = ids.masked_fill(mask == 0, 0)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)})
    return out


def random_corrections(model, scale: float = 0.01, seed: int = 0):
    """Every default target grouped by layer, and a random d_out × d_in float64 correction for each (the
    coupling's directions for given corrections)."""
    from layerprof.model.targets import find_targets

    g = torch.Generator().manual_seed(seed)
    layer_modules: dict = {}
    deltas = {}
    for n, t in find_targets(model).items():
        layer_modules.setdefault(t.layer, []).append(n)
        deltas[n] = scale * torch.randn(t.d_out, t.d_in, generator=g, dtype=torch.float64)
    return layer_modules, deltas


def snapshot(model):
    """Everything profiling must leave exactly as it was."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "hooks": {n: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
                  for n, m in model.named_modules()},
    }


def assert_untouched(model, snap):
    now = snapshot(model)
    for k, v in snap["state"].items():
        assert torch.equal(v, now["state"][k]), f"parameter/buffer {k} changed"
    assert now["requires_grad"] == snap["requires_grad"]
    for n, g in snap["grads"].items():
        if g is None:
            assert now["grads"][n] is None, f"{n}.grad was written"
        else:
            assert torch.equal(g, now["grads"][n])
    assert now["training"] == snap["training"]
    assert now["hooks"] == snap["hooks"]


@pytest.fixture
def gpt2():
    return make_model("gpt2")


@pytest.fixture
def batches():
    return make_batches()
