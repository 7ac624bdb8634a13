"""Coupling: finite-difference output directions vs forward-mode AD, the joint-gain model, placement."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import layerprof as lp
from conftest import assert_untouched, make_batches, make_model, random_corrections, snapshot
from layerprof.predict.coupling import coupled_greedy, coupling_matrix, joint_gain, output_directions
from layerprof.card.scores import DEFAULT_SCORE


class Tiny(nn.Module):
    """Two blocks of Linears with named layers and a logits output."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.layers = nn.ModuleList(nn.ModuleDict({"fc": nn.Linear(6, 6)}) for _ in range(2))
        self.head = nn.Linear(6, 11)

    def forward(self, input_ids, attention_mask=None, labels=None):
        h = self.emb(input_ids)
        for blk in self.layers:
            h = h + torch.tanh(blk["fc"](h))
        logits = self.head(h)
        return type("Out", (), {"logits": logits})()


def test_finite_difference_directions_match_forward_mode_ad():
    # Central differences have O(ε²) truncation error; with ε = 1e-3 of the weight scale in
    # float64 the directions agree with torch.func.jvp to ~1e-6 relative.
    torch.manual_seed(0)
    model = Tiny().double()
    ids = torch.randint(0, 11, (2, 5))
    batches = [{"input_ids": ids}]
    deltas = {f"layers.{i}.fc": torch.randn(6, 6, dtype=torch.float64) for i in range(2)}
    snap = snapshot(model)
    dirs = output_directions(model, batches, {0: ["layers.0.fc"], 1: ["layers.1.fc"]}, deltas, lambda m: m.weight)
    assert_untouched(model, snap)
    from torch.func import functional_call, jvp

    params = {k: v.detach() for k, v in model.named_parameters()}
    for layer in (0, 1):
        name = f"layers.{layer}.fc.weight"
        f = lambda w: functional_call(model, {**params, name: w}, (ids,)).logits.reshape(-1)  # noqa: E731
        _, tangent = jvp(f, (params[name],), (deltas[f"layers.{layer}.fc"],))
        assert torch.allclose(dirs[layer], tangent, rtol=1e-5, atol=1e-8)


class InPlace(Tiny):
    """Tiny whose blocks change a Linear's output in place, and read one input twice (q/k/v-like)."""

    def __init__(self):
        super().__init__()
        for blk in self.layers:
            blk["gate"] = nn.Linear(6, 6)

    def forward(self, input_ids, attention_mask=None, labels=None):
        h = self.emb(input_ids)
        for blk in self.layers:
            y = blk["fc"](h)
            y.mul_(torch.sigmoid(blk["gate"](h)))  # in place on the recorded call's output
            h = h + torch.tanh(y)
        return type("Out", (), {"logits": self.head(h)})()


@pytest.mark.parametrize("arch", [Tiny, InPlace])
def test_replayed_upstream_modules_give_the_same_directions(arch, monkeypatch):
    """Replay skips the modules upstream of the perturbed layer and changes nothing in the directions."""
    import layerprof.predict.replay as C

    assert C.Replay(arch(), ["layers.0.fc"]).modules == {}  # 6 × 6: below REPLAY_MIN_WEIGHTS, always computed
    monkeypatch.setattr(C, "REPLAY_MIN_WEIGHTS", 1)

    torch.manual_seed(1)
    model = arch().double()
    batches = [{"input_ids": torch.randint(0, 11, (3, 7))}, {"input_ids": torch.randint(0, 11, (2, 7))}]
    names = {i: [n for n, m in model.named_modules() if n.startswith(f"layers.{i}.") and isinstance(m, nn.Linear)]
             for i in range(2)}
    deltas = {n: torch.randn(6, 6, dtype=torch.float64) for ns in names.values() for n in ns}
    snap = snapshot(model)
    plain = output_directions(model, batches, names, deltas, lambda m: m.weight, replay=False)
    seen = []
    real = C.Replay.skipping

    def counting(self, exclude=()):
        seen.append(self)
        return real(self, exclude)

    C.Replay.skipping = counting
    try:
        replayed = output_directions(model, batches, names, deltas, lambda m: m.weight)
    finally:
        C.Replay.skipping = real
    assert_untouched(model, snap)
    assert all("forward" not in m.__dict__ for m in model.modules())  # the swapped forwards are restored
    for layer in names:
        torch.testing.assert_close(replayed[layer], plain[layer], rtol=1e-13, atol=1e-15)
    # Under inference mode tensors have no version counter: nothing is kept, every module computes.
    with torch.inference_mode():
        inferred = output_directions(model, batches, names, deltas, lambda m: m.weight)
    for layer in names:
        torch.testing.assert_close(inferred[layer], plain[layer], rtol=1e-13, atol=1e-15)
    assert_untouched(model, snap)
    # Layer 1 goes first: its + forward keeps layer 0's module calls (one per batch), its − forward replays
    # them: 1 sign × 2 batches × one module: Tiny's fc; in InPlace only the gate, since fc's output was
    # changed in place after its call. Layer 0's forwards change layer 1's inputs: nothing to replay.
    assert seen[0].skipped == 1 * 2 * 1


def test_joint_gain_is_additive_without_coupling_and_not_with_it():
    b = [2.0, 3.0, 5.0]
    assert math.isclose(joint_gain(b, np.eye(3)), 0.5 * sum(b))
    same = np.ones((2, 2))  # two layers that move the outputs in one direction
    assert math.isclose(joint_gain([4.0, 4.0], same), 0.5 * 4.0, rel_tol=1e-9)
    assert math.isclose(joint_gain([4.0], np.ones((1, 1))), 2.0)
    rho = np.array([[1.0, 0.9, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 1.0]])
    # Greedy with coupling avoids the near-duplicate of the best layer.
    assert coupled_greedy({0: 5.0, 1: 4.9, 2: 3.0}, [0, 1, 2], rho, 2) == [0, 2]
    assert coupled_greedy({0: 5.0, 1: 4.9, 2: 3.0}, [0, 1, 2], np.eye(3), 2) == [0, 1]


def test_profile_with_coupling_records_a_valid_matrix_and_leaves_the_model():
    model = make_model("gpt2")
    snap = snapshot(model)
    card = lp.profile(model, make_batches(n=3), progress=False, coupling=True, coupling_batches=2, rank=4)
    assert_untouched(model, snap)
    c = card.meta["coupling"]
    rho = np.asarray(c["rho"])
    assert c["layers"] == [0, 1, 2] and c["batches"] == 2
    assert np.allclose(rho, rho.T) and np.allclose(np.diag(rho), 1.0) and (np.abs(rho) <= 1).all()
    # coupling_matrix against explicit geometry: K is the Gram of the output directions, ρ their cosines.
    v = {0: torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), 1: torch.tensor([0.0, 2.0, 0.0], dtype=torch.float64),
         2: torch.tensor([-3.0, 0.0, 0.0], dtype=torch.float64), 3: torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)}
    layers, K, rho2 = coupling_matrix(v)
    assert layers == [0, 1, 2, 3]
    np.testing.assert_allclose(K, [[1, 0, -3, 1], [0, 4, 0, 2], [-3, 0, 9, -3], [1, 2, -3, 2]], atol=1e-12)
    s = 1 / math.sqrt(2)
    np.testing.assert_allclose(rho2, [[1, 0, -1, s], [0, 1, 0, s], [-1, 0, 1, -s], [s, s, -s, 1]], atol=1e-12)
    plan = card.place(layers=2, coupled=True)
    assert len(plan.layers) == 2
    with pytest.raises(lp.PlacementError, match="layers=k only"):
        card.place(budget=0.9, coupled=True)
    plain = lp.profile(model, make_batches(n=3), progress=False, rank=4, coupling=False)
    with pytest.raises(lp.PlacementError, match="coupling=True"):
        plain.place(layers=2, coupled=True)


def test_default_placement_is_stratified_k_on_rank_x_over_noise_and_the_coupled_greedy_on_request():
    """Round 9's default (studies/v1/notebook.md): ρ(r)²×/noise amp as the score, stratified-k for layers=k, no
    coupling pass; a card profiled with coupling places the coupled greedy when asked; with one batch
    (no halves) the naive ρ(r)²/noise amp, with a warning."""
    from layerprof.predict.coupling import coupled_greedy
    from layerprof.place.selectors import stratified_k
    from layerprof.card.scores import DEFAULT_SCORE, SCORES

    model = make_model("llama")  # 3 layers: k = 2 makes the bins [0] and [1, 2]
    card = lp.profile(model, make_batches(n=4), progress=False, rank=4)
    assert not card.meta.get("coupling")
    assert card.meta["settings"]["score"] == DEFAULT_SCORE and card.meta["settings"]["score_default"]
    assert card.meta["settings"]["rank_cross"] and card.meta["settings"]["score_fallback"] is None
    ids = [l.layer for l in card.layers]
    scores = [float(SCORES[DEFAULT_SCORE](vars(l))) for l in card.layers]
    assert [l.score for l in card.layers] == pytest.approx(scores, rel=1e-12)
    spread = card.place(layers=2).layers
    assert spread == stratified_k(dict(zip(ids, scores)), ids, 2) == card.place(layers=2, spread=True).layers
    assert spread == [0, max((1, 2), key=lambda l: (scores[l], -l))]
    top = sorted(np.argsort(-np.asarray(scores), kind="stable")[:2].tolist())
    assert card.place(layers=2, spread=False).layers == [ids[i] for i in top]
    # Budget and parameter constraints keep the additive placement; baseline columns are plain top-k.
    assert card.place(budget=0.9).layers == card.place(budget=0.9, spread=False).layers
    by = card.place(layers=2, by="grad_norm").layers
    assert by == sorted(np.argsort([-l.grad_norm for l in card.layers], kind="stable")[:2].tolist())
    with pytest.raises(lp.PlacementError, match="coupling=True"):
        card.place(layers=2, coupled=True)

    coupled = lp.profile(model, make_batches(n=4), progress=False, rank=4, coupling=True)
    assert coupled.meta["coupling"] and coupled.meta["settings"]["score"] == DEFAULT_SCORE
    c = coupled.meta["coupling"]
    col = [max(l.score, 0.0) for l in coupled.layers]
    expected = coupled_greedy(dict(zip(ids, col)), ids, np.asarray(c["rho"]), 2)
    assert coupled.place(layers=2, coupled=True).layers == expected
    assert coupled.place(layers=2).layers == stratified_k(dict(zip(ids, [l.score for l in coupled.layers])), ids, 2)
    # One batch has no split halves: the naive counterpart, finite (noise amp needs no halves), said so.
    with pytest.warns(UserWarning, match="one calibration batch.*resnorm2_rank_over_noise"):
        single = lp.profile(model, make_batches(n=1), progress=False, rank=4)
    assert single.meta["settings"]["score"] == "resnorm2_rank_over_noise"
    assert single.meta["settings"]["score_fallback"] == "one calibration batch: no split halves"
    assert [l.score for l in single.layers] == pytest.approx(
        [float(SCORES["resnorm2_rank_over_noise"](vars(l))) for l in single.layers], rel=1e-12)
    assert "fell back to it because of one calibration batch" in single.to_markdown()
    # A score named by the user is kept, and the card says it was not the default.
    chosen = lp.profile(model, make_batches(n=4), progress=False, rank=4, score="resnorm2_x")
    assert chosen.meta["settings"]["score"] == "resnorm2_x" and chosen.meta["settings"]["score_default"] is False


def test_coupling_reads_whole_sequences_up_to_its_token_cap():
    from layerprof.model.batches import leading_tokens

    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    b1 = {"input_ids": torch.arange(12).reshape(3, 4), "attention_mask": mask, "labels": torch.arange(12).reshape(3, 4),
          "flag": True}
    b2 = {"input_ids": torch.ones(2, 4, dtype=torch.long)}  # no mask: 4 tokens a sequence
    used, tokens = leading_tokens([b1, b2], 6)
    assert tokens == 5 and len(used) == 1 and used[0]["flag"] is True
    assert torch.equal(used[0]["input_ids"], b1["input_ids"][:2]) and torch.equal(used[0]["labels"], b1["labels"][:2])
    used, tokens = leading_tokens([b1, b2], 13)
    assert tokens == 13 and [u["input_ids"].shape[0] for u in used] == [3, 1]
    used, tokens = leading_tokens([b1, b2], None)
    assert tokens == 17 and [u["input_ids"].shape[0] for u in used] == [3, 2]
    used, tokens = leading_tokens([b1], 2)  # shorter than one sequence: that one sequence
    assert tokens == 3 and used[0]["input_ids"].shape[0] == 1
    used, tokens = leading_tokens([{"x": torch.zeros(10, 3), "y": torch.zeros(10)}], 4)  # feature rows
    assert tokens == 4 and used[0]["x"].shape == (4, 3) and used[0]["y"].shape == (4,)


def test_coupling_token_cap_is_recorded_and_a_cap_above_the_batches_changes_nothing():
    model = make_model("gpt2")
    batches = make_batches(n=3)
    full = lp.profile(model, batches, progress=False, rank=4, coupling=True, coupling_tokens=None)
    capped = lp.profile(model, batches, progress=False, rank=4, coupling=True, coupling_tokens=10 ** 6)
    assert full.meta["coupling"]["rho"] == capped.meta["coupling"]["rho"]
    small = lp.profile(model, batches, progress=False, rank=4, coupling=True, coupling_tokens=8)
    c = small.meta["coupling"]
    assert c["batches"] == 1 and 1 <= c["tokens"] <= full.meta["coupling"]["tokens"]
    assert c["tokens"] <= 8 or c["tokens"] == int(batches[0]["attention_mask"][0].sum())


def test_coupling_in_chunks_equals_one_pass_and_too_little_memory_falls_back(monkeypatch):
    """K is a sum over rows: chunks of sequences sized to the memory give the same matrix; when not even one
    sequence's directions fit, coupling=None (wherever it can) warns and goes without, coupling=True refuses."""
    import layerprof.pipeline.predict as predict
    from layerprof.pipeline.memory_plan import free_memory

    model = make_model("gpt2")
    batches = make_batches(n=3)
    whole = lp.profile(model, batches, progress=False, rank=4, coupling=True)
    assert whole.meta["coupling"]["chunks"] == 2  # the two coupling batches, each whole
    logits_per_sequence = int(model(**{k: v[:1] for k, v in batches[0].items()}).logits.numel())
    layers = len(whole.layers)
    # Room for one sequence per chunk, not two: the directions and the ± outputs in float64, and the replayed
    # forward's module inputs and outputs (float32, each distinct tensor once).
    one = whole.meta["coupling"]["sequence_bytes"]
    assert one >= 8 * 3 * layers * logits_per_sequence
    monkeypatch.setattr(predict, "COUPLING_MEMORY_FRACTION", 1.5 * one / free_memory(torch.device("cpu")))
    chunked = lp.profile(model, batches, progress=False, rank=4, coupling=True)
    c = chunked.meta["coupling"]
    assert c["chunks"] == sum(b["input_ids"].shape[0] for b in batches[:2])
    # Equal up to the float32 forward's rounding, which depends on the batch shape (~1e-8 here).
    np.testing.assert_allclose(c["K"], whole.meta["coupling"]["K"], rtol=1e-6, atol=1e-300)
    assert chunked.place(layers=2, coupled=True).layers == whole.place(layers=2, coupled=True).layers
    monkeypatch.setattr(predict, "COUPLING_MEMORY_FRACTION", 0.5 * one / free_memory(torch.device("cpu")))
    with pytest.warns(UserWarning, match="no coupling matrix .*more than"):
        fallback = lp.profile(model, batches, progress=False, rank=4, coupling=None)
    assert not fallback.meta.get("coupling") and fallback.meta["settings"]["score"] == DEFAULT_SCORE
    with pytest.raises(lp.ProfileError, match="coupling=False"):
        lp.profile(model, batches, progress=False, rank=4, coupling=True)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_coupling_of_16_bit_weights_by_forward_mode_ad(arch):
    """bfloat16 cannot hold the finite differences' 1e-3 steps: the coupling is then measured by forward-mode
    AD. Its directions equal central differences on the float32 model for the same corrections (to float32's
    differences, ~1e-7) and, in bfloat16, to bfloat16 accuracy; the profile measures it and leaves the model."""
    from layerprof.predict.coupling import jvp_directions
    from layerprof.model.targets import linear_kind

    model = make_model(arch).eval()
    batches = make_batches(n=1)
    layer_modules, deltas = random_corrections(model)
    fd = output_directions(model, batches, layer_modules, deltas, lambda m: linear_kind(m).weight(m))
    ad = jvp_directions(model, batches, layer_modules, deltas)
    low = make_model(arch).to(torch.bfloat16)
    low.load_state_dict({k: v.to(torch.bfloat16) for k, v in model.state_dict().items()})
    ad16 = jvp_directions(low, batches, layer_modules, deltas)
    cos = lambda a, b: float((a * b).sum() / (a.norm() * b.norm()))  # noqa: E731
    for layer in fd:
        assert cos(fd[layer], ad[layer]) > 1 - 1e-6 and cos(fd[layer], ad16[layer]) > 1 - 1e-3

    snap = snapshot(low)
    card = lp.profile(low, make_batches(n=3), progress=False, rank=4, coupling=True)
    assert_untouched(low, snap)
    c = card.meta["coupling"]
    rho = np.asarray(c["rho"])
    assert c["method"].startswith("forward-mode AD") and np.allclose(rho, rho.T) and np.allclose(np.diag(rho), 1.0)
    assert lp.profile(model, make_batches(n=3), progress=False, rank=4,
                      coupling=True).meta["coupling"]["method"].startswith("central")
