"""LayerCard: versioned JSON round trip, metadata, Markdown."""
import json
import math

import pytest

import layerprof as lp
from layerprof.stats.ops import resolve_backend
from conftest import make_batches, make_model


@pytest.fixture(scope="module")
def card():
    return lp.profile(make_model("gpt2"), make_batches(n=4), progress=False)


def test_round_trip_is_exact(card, tmp_path):
    path = card.save(tmp_path / "card.json")
    again = lp.LayerCard.load(path)
    assert again.modules == card.modules
    assert again.layers == card.layers
    assert again.meta == json.loads(json.dumps(card.meta))
    assert json.loads(path.read_text())["schema"] == "layerprof.card/1"


def test_metadata_identifies_model_data_settings(card):
    model = make_model("gpt2")
    meta = card.meta
    assert meta["model"]["class"] == "GPT2LMHeadModel"
    assert meta["model"]["parameters"] == sum(p.numel() for p in model.parameters())
    batches = make_batches(n=4)
    assert meta["data"]["rows"] == sum(int(b["attention_mask"].sum()) for b in batches)
    assert meta["data"]["batches"] == 4
    assert meta["settings"] == {**meta["settings"], "rank": 8, "damping": 1e-3, "dtype": "float32",
                                "backend": resolve_backend("auto", "cpu"), "backend_requested": "auto"}
    assert {"torch", "layerprof", "transformers", "python"} <= set(meta["versions"])
    assert meta["sweep"]["seconds"] > 0 and meta["sweep"]["peak_memory_bytes"] > 0
    assert meta["skipped"] == [] and meta["unfired"] == []
    assert meta["heads"] == [{"name": "lm_head", "d_in": 24, "d_out": 97}]


def test_fingerprints_change_with_data_and_model():
    a = lp.profile(make_model("gpt2"), make_batches(seed=1), progress=False)
    b = lp.profile(make_model("gpt2"), make_batches(seed=2), progress=False)
    c = lp.profile(make_model("llama"), make_batches(seed=1), progress=False)
    assert a.meta["data"]["hash"] != b.meta["data"]["hash"]
    assert a.meta["model"]["config_hash"] != c.meta["model"]["config_hash"]
    again = lp.profile(make_model("gpt2"), make_batches(seed=1), progress=False)
    assert again.meta["data"]["hash"] == a.meta["data"]["hash"]


def test_markdown_shows_every_layer_and_the_recommendation(card):
    md = card.to_markdown()
    assert "## Recommendation" in md and "Adapt layers" in md
    for l in card.layers:
        assert f"\n| {l.layer} |" in md
    for m in card.modules:
        assert m.name in md
    assert "Kendall τ" in md
    # The recommendation is stratified-k on ρ(r)²/noise amp (the default score), computed independently here.
    from layerprof.place.selectors import depth_bins

    k = max(1, len(card.layers) // 4)
    rows = {l.layer: l.resnorm_rank ** 2 / l.noise_amp for l in card.layers}
    bins = depth_bins(sorted(rows), k)
    expected = sorted(max(b, key=lambda l: (rows[l], -l)) for b in bins)
    assert card.place(layers=k).layers == expected and f"Adapt layers **{', '.join(map(str, expected))}**" in md
    top = sorted(sorted(rows, key=lambda l: -rows[l])[:k])
    assert f"top-k on the score {top}" in md


def test_html_is_self_contained(card, tmp_path):
    text = card.to_html(tmp_path / "card.html")
    assert text.startswith("<!doctype html>") and "<table>" in text
    # http appears only as SVG namespace names (never fetched); tests/test_report_html.py checks the rest.
    import re

    assert set(re.findall(r"https?://[^\"'< ]+", text)) <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
    assert "<script" not in text


def test_save_is_atomic(card, tmp_path):
    path = tmp_path / "card.json"
    path.write_text("old")
    card.meta["unserializable"] = object()
    try:
        with pytest.raises(TypeError):
            card.save(path)
    finally:
        del card.meta["unserializable"]
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]


def test_single_batch_has_no_stability_figure_and_says_so():
    card = lp.profile(make_model("gpt2"), make_batches(n=1), progress=False)
    st = card.meta["stability"]
    assert st["kendall_tau"] is None and st["stable"] is False and "more batches" in st["note"]
    assert all(math.isfinite(l.resnorm_a) for l in card.layers)


def test_stability_line_warns_when_the_halves_disagree_at_the_top(card):
    import copy

    line = lambda c: next(l for l in c.to_markdown().splitlines() if l.startswith("- stability:"))  # noqa: E731
    agree, split = copy.deepcopy(card), copy.deepcopy(card)
    agree.meta["stability"].update(kendall_tau=0.9, stable=True, top_k_overlap=1.0)
    split.meta["stability"].update(kendall_tau=0.9, stable=True, top_k_overlap=0.0)
    assert line(agree).endswith("— stable")
    k = split.meta["stability"]["top_k"]
    assert f"— stable; but the two halves' top-{k} share only 0% of their layers" in line(split)
