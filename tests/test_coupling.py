"""Coupling: finite-difference output directions vs forward-mode AD, the joint-gain model, placement."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import layerprof as lp
from conftest import assert_untouched, make_batches, make_model, snapshot
from layerprof.coupling import coupled_greedy, coupling_matrix, joint_gain, output_directions


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
    plain = lp.profile(model, make_batches(n=3), progress=False, rank=4)
    with pytest.raises(lp.PlacementError, match="coupling=True"):
        plain.place(layers=2, coupled=True)
