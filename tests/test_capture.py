"""Taps: statistics from backward only, padding excluded, the model left exactly as it was."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import layerprof as lp
from conftest import assert_untouched, make_batches, make_model, snapshot
from reference import reference_stats, weight_of


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_C_equals_the_weight_gradient_autograd_computes(arch):
    # With W trainable, autograd's ∂L/∂W is Σ_t g_t x_tᵀ over every row, so with no padding
    # C must equal it (transposed for nn.Linear, as stored for GPT-2's Conv1D). Both sides
    # are fp64 sums of the same fp64 products: agreement to 1e-10 relative.
    model = make_model(arch).double()
    batches = [{k: v for k, v in b.items() if k != "attention_mask"} for b in make_batches(n=2)]
    for b in batches:
        b["labels"] = b["input_ids"].clone()
    for p in model.parameters():
        p.requires_grad_(True)
    with lp.Profiler(model, dtype=torch.float64) as prof:
        for b in batches:
            model(**b).loss.backward()
    mods = dict(model.named_modules())
    for name in prof.targets:
        W = mods[name].weight
        grad = W.grad if type(mods[name]).__name__ == "Conv1D" else W.grad.t()
        C = prof.acc.total(name).C
        assert torch.allclose(C, grad, rtol=1e-10, atol=1e-12), name
    card = prof.card()
    for row in card.modules:
        assert math.isclose(row.grad_norm, float(mods[row.name].weight.grad.norm()), rel_tol=1e-10)


def test_profile_leaves_model_bitwise_unchanged_and_restores_flags_modes_hooks():
    model = make_model("gpt2")
    model.train()
    model.transformer.h[1].eval()
    model.transformer.wte.weight.requires_grad_(False)
    snap = snapshot(model)
    lp.profile(model, make_batches(), progress=False)
    assert_untouched(model, snap)
    assert all(p.grad is None for p in model.parameters())


def test_fully_frozen_model_in_a_user_loop():
    model = make_model("qwen3")
    for p in model.parameters():
        p.requires_grad_(False)
    snap = snapshot(model)
    with lp.Profiler(model) as prof:
        for b in make_batches():
            model(**b).loss.backward()
    card = prof.card()
    assert len(card.modules) == 3 * 7 and all(m.rows > 0 for m in card.modules)
    assert_untouched(model, snap)


def test_padding_invariance():
    # The same tokens with more padding positions (right padding, causal model) give the
    # same statistics: padding rows are excluded, real rows are unchanged. Only the
    # attention kernel's summation order may differ with the sequence length: 1e-4.
    model = make_model("gpt2")
    a = lp.profile(model, make_batches(seq=11), progress=False)
    b = lp.profile(model, make_batches(seq=11, pad_to=23), progress=False)
    assert a.meta["data"]["rows"] == b.meta["data"]["rows"]
    for ra, rb in zip(a.modules, b.modules):
        assert ra.rows == rb.rows
        for col in ("resnorm", "energy", "grad_norm", "erank", "noise_amp"):
            assert math.isclose(getattr(ra, col), getattr(rb, col), rel_tol=1e-4), (ra.name, col)


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_card(reentrant):
    # Checkpointing re-runs block forwards inside backward; taps count in backward only,
    # so rows, call counts and every column must match the plain run.
    def run(checkpoint):
        model = make_model("llama").train()  # checkpointing is active in train mode only
        for p in model.parameters():
            p.requires_grad_(True)
        if checkpoint:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        with lp.Profiler(model) as prof:
            for b in make_batches():
                model(**b).loss.backward()
        return prof.card()

    plain, ckpt = run(False), run(True)
    assert plain.meta["calls"] == ckpt.meta["calls"]
    for ra, rb in zip(plain.modules, ckpt.modules):
        assert ra.rows == rb.rows
        for col in ("resnorm", "resnorm_rank", "energy", "grad_norm", "nfn"):
            assert math.isclose(getattr(ra, col), getattr(rb, col), rel_tol=1e-5), (ra.name, col)


class TwiceUsed(nn.Module):
    """One Linear applied to two different inputs in a forward (e.g. a shared projection)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 6)
        self.shared = nn.Linear(6, 6)
        self.out = nn.Linear(6, 20)

    def forward(self, input_ids, attention_mask=None, labels=None):
        h = self.emb(input_ids)
        h = torch.tanh(self.shared(h)) + self.shared(h * 0.5)
        logits = self.out(h)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        return type("Out", (), {"loss": loss, "logits": logits})()


def test_module_called_several_times_contributes_every_call():
    torch.manual_seed(0)
    model = TwiceUsed().double()
    g = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(2):
        ids = torch.randint(0, 20, (2, 5), generator=g)
        mask = torch.ones(2, 5, dtype=torch.long)
        mask[1, 3:] = 0
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)})
    card = lp.profile(model, batches, targets=["shared"], rank=2, dtype=torch.float64, progress=False)
    ref = reference_stats(model, batches, ["shared"])
    row = card.module("shared")
    assert row.rows == ref["shared"]["N"] == 2 * 2 * 8  # two calls × two batches × 8 real rows
    assert row.calls == 4
    assert math.isclose(row.grad_norm, float(torch.tensor(ref["shared"]["C"]).norm()), rel_tol=1e-10)
    assert card.meta["data"]["rows"] == 16  # tokens, not tap calls


def test_tap_that_never_fires_is_reported_by_name():
    class Branchy(TwiceUsed):
        def __init__(self):
            super().__init__()
            self.unused = nn.Linear(6, 6)

    torch.manual_seed(0)
    model = Branchy()
    ids = torch.randint(0, 20, (2, 5))
    with pytest.warns(UserWarning, match="unused"):
        card = lp.profile(model, [{"input_ids": ids, "labels": ids}], progress=False, targets=["shared", "unused"], rank=2)
    assert card.meta["unfired"] == ["unused"]
    assert [m.name for m in card.modules] == ["shared"]
    assert "unused" in card.to_markdown()


def test_forward_under_no_grad_is_not_counted():
    model = make_model("gpt2")
    batches = make_batches()
    with lp.Profiler(model) as prof:
        with torch.no_grad():
            model(**batches[0])  # an eval forward in the user's loop
        for b in batches:
            model(**b).loss.backward()
    assert prof.card().meta["data"]["batches"] == len(batches)


def test_bf16_model_accumulates_in_fp32():
    # bf16 activations carry relative error ~u_bf16 = 2^-8 per element; energy (a mean of
    # squares over many rows) averages it out, so it must agree with the fp32 model's within
    # a few u (5%), and the statistics themselves must be fp32.
    model = make_model("llama")
    ref = lp.profile(model, make_batches(), progress=False)
    with lp.Profiler(model.to(torch.bfloat16)) as prof:
        for b in make_batches():
            model(**b).loss.backward()
    assert prof.acc.total(ref.modules[0].name).S.dtype == torch.float32
    card = prof.card()
    for a, b in zip(ref.modules, card.modules):
        assert math.isclose(a.energy, b.energy, rel_tol=0.05), a.name
        assert math.isfinite(b.resnorm) and b.rows == a.rows


def test_modules_reading_one_input_share_one_gram():
    # Llama's q/k/v read one tensor, gate/up another: 2 Gram updates per block and batch
    # instead of 5 (+ o_proj, down_proj: 4 instead of 7), and their S are identical.
    model = make_model("llama")
    batches = make_batches()
    with lp.Profiler(model) as prof:
        for b in batches:
            model(**b).loss.backward()
    fired = sum(prof.acc.calls.values())
    assert fired == 3 * 7 * len(batches)
    assert prof.acc.gram_updates == 3 * 4 * len(batches)
    S = {n: prof.acc.total(n).S for n in prof.targets}
    for layer in range(3):
        p = f"model.layers.{layer}."
        assert torch.equal(S[p + "self_attn.q_proj"], S[p + "self_attn.k_proj"])
        assert torch.equal(S[p + "self_attn.q_proj"], S[p + "self_attn.v_proj"])
        assert torch.equal(S[p + "mlp.gate_proj"], S[p + "mlp.up_proj"])


def test_input_keys_follow_identity_and_version():
    # The key that lets modules share a Gram: same object and version -> same key; an
    # in-place change or a new object (even at a reused id()) -> a new key.
    from layerprof.stats.capture import InputKeys

    keys = InputKeys()
    h = torch.randn(3, 4)
    k1 = keys(h)
    assert keys(h) == k1
    h.mul_(2.0)
    k2 = keys(h)
    assert k2 != k1 and keys(h) == k2
    other = torch.randn(3, 4)
    assert keys(other) not in (k1, k2)
    del h
    fresh = torch.randn(3, 4)  # may reuse h's id(); the weak reference tells them apart
    assert keys(fresh) not in (k1, k2)
    keys.reset()
    assert keys(other) != keys(fresh)


def test_modules_reading_one_input_share_one_S_tensor():
    # Storage, not only compute: q/k/v hold one S tensor per half, gate/up another, so a
    # Llama block keeps 4 d×d-class buffers per half instead of 7.
    model = make_model("llama")
    with lp.Profiler(model) as prof:
        for b in make_batches(n=4):
            model(**b).loss.backward()
    acc = prof.acc
    for half in acc.halves:
        for layer in range(3):
            p = f"model.layers.{layer}."
            assert half[p + "self_attn.q_proj"].S is half[p + "self_attn.k_proj"].S is half[p + "self_attn.v_proj"].S
            assert half[p + "mlp.gate_proj"].S is half[p + "mlp.up_proj"].S
            assert half[p + "self_attn.o_proj"].S is not half[p + "self_attn.q_proj"].S
    assert acc.shared_S() == 2 * 3 * 4
    dense = sum(st.S.numel() * 4 + st.C.numel() * 4 + 4 for half in acc.halves for st in half.values())
    saved = sum(st.S.numel() * 4 for half in acc.halves for n, st in half.items()
                if n.endswith(("k_proj", "v_proj", "up_proj")))
    assert acc.statistics_bytes() == dense - saved
    assert prof.card().meta["sweep"]["statistics_bytes"] == dense - saved


class _TwoReaders(torch.nn.Module):
    """a and b read the same tensor until ``split`` is set; then b reads another one."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(5, 3)
        self.b = torch.nn.Linear(5, 3)
        self.split = False

    def forward(self, x):
        return self.a(x).pow(2).sum() + self.b(x * 2.0 if self.split else x).pow(2).sum()


def test_shared_S_is_split_when_inputs_diverge():
    # Batches 0, 2 (half 0) and 1, 3 (half 1): a and b share S until batch 2, where b reads 2x.
    # Every S must still equal the sum over that module's own inputs.
    torch.manual_seed(0)
    model = _TwoReaders()
    xs = [torch.randn(7, 5) for _ in range(4)]
    with lp.Profiler(model, targets=["a", "b"], rank=2) as prof:
        for i, x in enumerate(xs):
            model.split = i >= 2
            model(x).backward()
    half0 = prof.acc.halves[0]
    assert half0["a"].S is not half0["b"].S
    for name, scale in (("a", [1, 1, 1, 1]), ("b", [1, 1, 2, 2])):
        for h in (0, 1):
            want = sum((scale[i] * xs[i]).T @ (scale[i] * xs[i]) for i in range(h, 4, 2))
            got = ops_symmetric(prof.acc.halves[h][name].S)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def ops_symmetric(S):
    from layerprof.stats.ops import symmetric

    return symmetric(S)


@pytest.mark.parametrize("arch", ["gpt2", "bert", "llama"])  # Conv1D with bias, Linear with bias, without
def test_output_energy_is_the_float64_trace_over_the_counted_rows(arch):
    # nfn's tr(W Σ Wᵀ) is read off the module outputs in the sweep (ModuleStats.y2, with the bias taken
    # off): over exactly the rows S counts (padding excluded), it is Σ_t ‖W x_t‖² = tr(W S Wᵀ) of the
    # float64 reference, and the card's nfn is the one finalize would compute from W and Σ.
    from layerprof.stats.finalize import module_columns

    model = make_model(arch).double()
    batches = make_batches()
    if arch == "bert":  # an encoder: masked-LM labels at every real token
        for b in batches:
            b["labels"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
    with lp.Profiler(model, dtype=torch.float64) as prof:
        for b in batches:
            model(**b).loss.backward()
    ref = reference_stats(model, batches, prof.targets)
    mods = dict(model.named_modules())
    assert any(getattr(mods[n], "bias", None) is not None for n in prof.targets) == (arch != "llama")
    for name in prof.targets:
        st = prof.acc.total(name)
        W = weight_of(model, name)
        assert st.y2 is not None, name
        assert math.isclose(float(st.y2), float(np.trace(W @ ref[name]["S"] @ W.T)), rel_tol=1e-10), name
        Wt = torch.from_numpy(W)
        with_y2 = module_columns(st, Wt, rank=4, damping=1e-3)["nfn"]
        st.y2 = None  # finalize's own path: ‖W L‖² − λ‖W‖²
        assert math.isclose(with_y2, module_columns(st, Wt, rank=4, damping=1e-3)["nfn"], rel_tol=1e-10), name


def test_a_call_without_output_energy_leaves_it_unknown():
    # One call whose output could not give ‖W x‖² (a shape that does not fit) makes the module's sum
    # unknown rather than short: finalize then computes tr(W Σ Wᵀ) itself.
    from layerprof.stats.accumulate import Accumulator

    acc = Accumulator({"a": (4, 3), "b": (4, 3)})
    for batch in range(2):
        for name in ("a", "b"):
            x, g = torch.randn(5, 4), torch.randn(5, 3)
            known = name == "a" or batch == 0
            acc.update(name, x, g, None, 5, y2=torch.tensor(2.0) if known else None)
        acc.commit()
    assert float(acc.total("a").y2) == 4.0 and acc.total("b").y2 is None
    assert float(acc.half(0, "b").y2) == 2.0 and acc.half(1, "b").y2 is None


def test_output_energy_in_bf16_is_the_rounded_pass_within_its_rounding():
    # In bf16 the outputs the model computed are rounded (8 bits of mantissa): nfn read off them may
    # differ from tr(W Σ Wᵀ) of the fp32-accumulated Σ by that rounding, averaged over many outputs —
    # a few 1e-4 relative, never the 2⁻⁸ of one value.
    from layerprof.stats.finalize import module_columns

    model = make_model("gpt2").to(torch.bfloat16)
    with lp.Profiler(model) as prof:
        for b in make_batches():
            model(**b).loss.backward()
    mods = dict(model.named_modules())
    for name in prof.targets:
        st = prof.acc.total(name)
        W = mods[name].weight.t().double()  # Conv1D stores d_in × d_out
        from_outputs = module_columns(st, W, rank=4, damping=1e-3)["nfn"]
        st.y2 = None
        from_sigma = module_columns(st, W, rank=4, damping=1e-3)["nfn"]
        assert math.isclose(from_outputs, from_sigma, rel_tol=1e-3), name
