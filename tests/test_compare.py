"""`layerprof compare`: agreement of two cards, checked against scipy and by construction."""
import json

import pytest

import layerprof as lp
from conftest import make_batches, make_model
from layerprof.cli.commands import main
from layerprof.card.compare import compare


@pytest.fixture(scope="module")
def cards(tmp_path_factory):
    d = tmp_path_factory.mktemp("cards")
    a = lp.profile(make_model("llama"), make_batches(n=4, seed=1), rank=4, progress=False)
    b = lp.profile(make_model("llama"), make_batches(n=4, seed=7), rank=4, progress=False)
    return a, b, a.save(d / "a.json"), b.save(d / "b.json")


def test_a_card_agrees_with_itself(cards):
    a, _, _, _ = cards
    r = compare(a, a, k=2)
    assert r["kendall_tau"] == pytest.approx(1.0) and r["top_k_overlap"] == 1.0 and r["same_data"]


def test_two_cards_against_scipy(cards):
    from scipy.stats import kendalltau, spearmanr

    a, b, _, _ = cards
    r = compare(a, b, k=1)
    sa, sb = [l.score for l in a.layers], [l.score for l in b.layers]
    assert r["kendall_tau"] == pytest.approx(kendalltau(sa, sb).statistic)
    assert r["spearman"] == pytest.approx(spearmanr(sa, sb).statistic)
    assert r["top_k_overlap"] == (1.0 if a.ranking()[0] == b.ranking()[0] else 0.0)
    assert r["same_model"] and not r["same_data"]


def test_cli_compare_text_json_and_errors(cards, capsys):
    _, _, pa, pb = cards
    assert main(["compare", str(pa), str(pb)]) == 0
    assert "Kendall τ" in capsys.readouterr().out
    assert main(["compare", str(pa), str(pb), "--json", "--k", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["k"] == 2
    assert main(["compare", str(pa), str(pb), "--k", "9"]) == 2
    assert "k must be in 1..3" in capsys.readouterr().err


def test_cards_of_different_models_are_refused_unless_forced(cards, tmp_path, capsys):
    a, _, pa, _ = cards
    other = lp.profile(make_model("gpt2"), make_batches(n=3, seed=2), rank=4, progress=False)
    po = other.save(tmp_path / "gpt2.json")
    with pytest.raises(lp.LayerprofError, match="not of the same model.*model classes differ.*--force"):
        compare(a, other)
    assert main(["compare", str(pa), str(po)]) == 2
    err = capsys.readouterr().err
    assert "not of the same model" in err and "Kendall" not in err
    assert main(["compare", str(pa), str(po), "--force", "--json"]) == 0
    out = capsys.readouterr()
    assert "WARNING: --force" in out.err and "model classes differ" in out.err
    assert json.loads(out.out)["forced"] == ["model classes differ (A LlamaForCausalLM, B GPT2LMHeadModel)"] + (
        [] if len(a.layers) == len(other.layers) else [f"layers differ (A has {len(a.layers)}, B has {len(other.layers)})"])
    assert compare(a, a)["forced"] == []
