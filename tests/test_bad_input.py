"""docs/method.md: each bad input gets a clear message naming the fix and leaves the model exactly as it was."""
import json
import math

import pytest
import torch

import layerprof as lp
from conftest import VOCAB, assert_untouched, make_batches, make_model, snapshot


@pytest.fixture
def model():
    m = make_model("gpt2")
    m.train()  # a state profile must restore
    return m


def _expect(model, exc, match, **kw):
    snap = snapshot(model)
    with pytest.raises(exc, match=match):
        lp.profile(model, progress=False, **kw)
    assert_untouched(model, snap)


def test_no_batches(model):
    _expect(model, lp.ProfileError, "no batches", batches=[])


def test_no_matching_targets_lists_what_exists(model):
    _expect(model, ValueError, r"no target modules matched \['q_proj'\].*c_attn.*c_fc", batches=make_batches(),
            targets=["q_proj"])


def test_loss_not_scalar(model):
    per_token = lambda out, b: torch.nn.functional.cross_entropy(  # noqa: E731
        out.logits.flatten(0, 1), b["input_ids"].flatten(), reduction="none")
    _expect(model, lp.ProfileError, "must be a scalar.*loss.mean", batches=make_batches(), loss_fn=per_token)


def test_loss_without_grad(model):
    _expect(model, lp.ProfileError, "does not require grad", batches=make_batches(),
            loss_fn=lambda out, b: out.loss.detach())


def test_missing_labels_names_the_fix(model):
    batches = [{k: v for k, v in b.items() if k != "labels"} for b in make_batches()]
    _expect(model, lp.ProfileError, "include labels", batches=batches)


def test_failure_mid_sweep_restores_the_model(model):
    calls = {"n": 0}

    def flaky(out, b):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom in batch 2")
        return out.loss

    # The user's loss_fn failing comes back as a BatchError naming the batch, the original chained.
    _expect(model, lp.BatchError, r"batch 1: loss_fn failed on it \(RuntimeError: boom in batch 2\)",
            batches=make_batches(), loss_fn=flaky)


def test_rank_larger_than_module(model):
    _expect(model, lp.ProfileError, r"rank=30 exceeds min\(d_in, d_out\).*rank <= 24", batches=make_batches(),
            rank=30)


def test_non_finite_loss_batch_is_skipped_and_counted(model):
    batches = make_batches(n=4)
    nan_at = {"i": 0}

    def loss_fn(out, b):
        nan_at["i"] += 1
        return out.loss * float("nan") if nan_at["i"] == 2 else out.loss

    snap = snapshot(model)
    card = lp.profile(model, batches, loss_fn=loss_fn, progress=False)
    assert_untouched(model, snap)
    assert len(card.meta["skipped"]) == 1 and "non-finite loss" in card.meta["skipped"][0]["reason"]
    clean = lp.profile(model, [batches[0], batches[2], batches[3]], progress=False)
    for a, b in zip(card.modules, clean.modules):
        assert a.rows == b.rows and math.isclose(a.resnorm, b.resnorm, rel_tol=1e-6)


def test_non_finite_gradients_drop_the_whole_batch(model):
    # A finite loss whose backward yields NaN (d√u/du at 0): statistics of that batch must be
    # dropped whole — never half-updated — so the card equals the one without the batch.
    batches = make_batches(n=3)
    state = {"i": 0}

    def loss_fn(out, b):
        state["i"] += 1
        if state["i"] == 2:
            return out.loss + torch.sqrt((out.logits * 0).abs()).sum()
        return out.loss

    card = lp.profile(model, batches, loss_fn=loss_fn, progress=False)
    assert [s["reason"] for s in card.meta["skipped"]] == ["non-finite gradients or inputs"]
    clean = lp.profile(model, [batches[0], batches[2]], progress=False)
    for a, b in zip(card.modules, clean.modules):
        assert a.rows == b.rows and math.isclose(a.resnorm, b.resnorm, rel_tol=1e-6)


def test_nothing_left_after_skipping(model):
    _expect(model, lp.ProfileError, "every batch was skipped", batches=make_batches(),
            loss_fn=lambda out, b: out.loss * float("inf"))


def test_padding_only_batches(model):
    batches = make_batches(n=2)
    pad = {k: v.clone() for k, v in batches[0].items()}
    pad["attention_mask"].zero_()
    pad["labels"].fill_(-100)
    card = lp.profile(model, [pad] + batches, progress=False)
    assert card.meta["skipped"] == [{"batch": 0, "reason": "padding-only batch (attention_mask is all zero)"}]
    assert card.meta["data"]["batches"] == 2
    _expect(model, lp.ProfileError, "padding-only", batches=[pad, pad])


def test_batch_of_wrong_type(model):
    _expect(model, lp.ProfileError, "dict of model keyword arguments", batches=[[1, 2, 3]])


def test_card_of_another_schema_or_corrupted(tmp_path):
    card = lp.profile(make_model("gpt2"), make_batches(), progress=False)
    path = card.save(tmp_path / "card.json")
    data = json.loads(path.read_text())
    data["schema"] = "layerprof.card/0"
    (tmp_path / "old.json").write_text(json.dumps(data))
    with pytest.raises(lp.CardFormatError, match="schema 'layerprof.card/0'.*re-create"):
        lp.LayerCard.load(tmp_path / "old.json")
    (tmp_path / "cut.json").write_text(path.read_text()[:500])
    with pytest.raises(lp.CardFormatError, match="not valid JSON.*corrupted or truncated"):
        lp.LayerCard.load(tmp_path / "cut.json")
    del data["layers"][0]["resnorm"]
    data["schema"] = "layerprof.card/1"
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(lp.CardFormatError, match=r"layers\[0\]\.resnorm: missing.*re-create"):
        lp.LayerCard.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="layerprof card"):
        lp.LayerCard.load(tmp_path / "missing.json")


def test_placement_budget_nothing_fits():
    card = lp.profile(make_model("gpt2"), make_batches(), progress=False)
    with pytest.raises(lp.PlacementError, match="no placement fits budget=0.01.*cheapest single layer costs"):
        card.place(budget=0.01)
    with pytest.raises(lp.PlacementError, match="no placement fits params=10"):
        card.place(params=10)
    with pytest.raises(lp.PlacementError, match="exactly one of"):
        card.place(layers=1, budget=0.5)
    with pytest.raises(lp.PlacementError, match="layers must be an int in 1..3"):
        card.place(layers=9)


def test_batch_keys_the_forward_does_not_take_are_dropped_with_one_warning():
    """An extra key (labels for a bare encoder, a dataset's idx) is not passed to the model; one warning."""
    import warnings

    from transformers import BertConfig, BertModel

    from layerprof.model.batches import _warned_keys

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=VOCAB, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                                 num_attention_heads=2, max_position_embeddings=64)).eval()
    seen = []
    model.register_forward_pre_hook(lambda m, a, kw: seen.append(sorted(kw)), with_kwargs=True)
    batches = [{**b, "idx": torch.arange(3)} for b in make_batches(n=2)]
    _warned_keys.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        card = lp.profile(model, batches, rank=2, progress=False,
                          loss_fn=lambda out, b: (out.last_hidden_state.pow(2).mean(-1) * b["attention_mask"]).mean())
    messages = [str(w.message) for w in caught if "not arguments of BertModel.forward" in str(w.message)]
    assert len(messages) == 1 and "['labels', 'idx']" in messages[0]
    assert all("labels" not in keys and "idx" not in keys for keys in seen) and len(card.layers) == 2
