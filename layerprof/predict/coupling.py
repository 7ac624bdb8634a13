"""Coupling between layers (docs/method.md): do their residual corrections interact?

For layer a, D_a is the optimal correction of each of its modules,
ΔW_m = −C_mᵀ (Σ_m + λ_m I)⁻¹ (d_out × d_in), and δf_a = J_a D_a the first-order change it
induces in the model outputs (logits) on calibration rows, measured by a central finite
difference of two forwards, (f(W + εD) − f(W − εD)) / 2ε, with ε chosen so the largest
weight change is 1e-3 of the module's weight scale. Then

    K_ab = ⟨δf_a, δf_b⟩,   ρ_ab = K_ab / (‖δf_a‖ ‖δf_b‖)

With b_a = ρ_a² (the layer's resnorm²), the quadratic model's joint gain of a layer set A
is ½ b_Aᵀ K̃_AA⁺ b_A where K̃_ab = ρ_ab √(b_a b_b) rescales each direction so that a layer
alone predicts its own ½ b_a; when ρ is the identity the gain is additive (½ Σ b_a).
Costs two forwards per layer on the subset of rows; weights are restored bitwise.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Mapping

import numpy as np
import torch
from torch import nn

from ..stats import linalg
from ..stats.solve import SolveCache
from .replay import Replay


def corrections(stats: Mapping[str, "object"], damping: float) -> dict[str, torch.Tensor]:
    """ΔW_m = −C_mᵀ (Σ_m + λ_m I)⁻¹ per module, float64 on the CPU, shape d_out × d_in.

    By finalize's factorization (``SolveCache``: the Cholesky factor L of Σ + λI, one per distinct S,
    so q/k/v and gate/up share theirs): ΔWᵀ = −L⁻ᵀ(L⁻¹C). Where L does not exist (δ = 0 on a singular
    Σ) the least-squares solution, as before.
    """
    solves = SolveCache(damping)
    out = {}
    with linalg.blas_threads(torch.get_num_threads()):  # scipy's BLAS as many threads as torch's
        for name, st in stats.items():
            solve = solves.get(st.S.cpu(), st.N)
            C = st.C.double().cpu()
            if solve.chol is not None:
                solution = linalg.solve_lower(solve.chol, linalg.solve_lower(solve.chol, C), transpose=True)
            else:
                eye = torch.eye(solve.d, dtype=torch.float64)
                solution = torch.linalg.lstsq(solve.sigma + solve.lam * eye, C).solution
            out[name] = -solution.t()
    return out


def _logits(out, batch: Mapping) -> torch.Tensor:
    """A forward's logits on the batch's non-padding rows, flattened (the output space of the directions)."""
    logits = out.logits if hasattr(out, "logits") else out[0]
    mask = batch.get("attention_mask")
    if mask is not None and tuple(mask.shape) == tuple(logits.shape[:2]):
        logits = logits[mask.bool()]
    return logits.reshape(-1)


@contextlib.contextmanager
def _in_eval(model: nn.Module):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def output_logits(model: nn.Module, batches: list[dict]) -> torch.Tensor:
    """The model's logits on the batches' non-padding rows, flattened, float64 (no gradients)."""
    with torch.no_grad():
        return torch.cat([_logits(model(**{k: v for k, v in b.items() if k != "labels"}), b).double()
                          for b in batches])


def output_directions(model: nn.Module, batches: list[dict], layer_modules: Mapping[int, list[str]],
                      deltas: Mapping[str, torch.Tensor], weight_of, replay: bool = True) -> dict[int, torch.Tensor]:
    """δf_a for each layer a by central finite differences; weights restored bitwise.

    With ``replay``, modules upstream of the perturbed layer return the unperturbed forward's outputs
    (``Replay``) instead of recomputing them: the same directions for about half the linear work."""
    modules = dict(model.named_modules())
    dirs = {}
    names_all = [n for names in layer_modules.values() for n in names]
    with _in_eval(model), Replay(model, names_all if replay else []) as rep:
        # The top layer first: its + forward runs every other layer unperturbed and fills the records.
        for layer, names in sorted(layer_modules.items(), reverse=True):
            ws = {n: weight_of(modules[n]) for n in names}
            scale = max(float(ws[n].detach().abs().max()) / max(float(deltas[n].abs().max()), 1e-30) for n in names)
            eps = 1e-3 * scale
            with rep.skipping(exclude=names):
                plus, minus = central_difference(model, names, deltas, eps, weight_of,
                                                 rep.evaluating(lambda: output_logits(model, batches)))
            dirs[layer] = (plus - minus) / (2 * eps)
    return dirs


def jvp_directions(model: nn.Module, batches: list[dict], layer_modules: Mapping[int, list[str]],
                   deltas: Mapping[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """δf_a = J_a D_a for each layer a by forward-mode AD (``torch.func.jvp``), in the model's own dtype.

    For weights too coarse for the finite differences (16-bit floats hold 8–11 bits: a 1e-3 step of the
    weight scale rounds away): the directional derivative is exact up to that dtype's arithmetic (cosines
    within ~1e-4 of float32's on the test models). Attention runs on PyTorch's math kernel, the one with
    forward-mode AD. Nothing is written to the model.
    """
    from types import SimpleNamespace

    from torch.func import functional_call, jvp
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..model.targets import linear_kind

    modules = dict(model.named_modules())
    dirs = {}
    with _in_eval(model):
        for layer, names in layer_modules.items():
            params = [f"{n}.weight" for n in names]
            primals = tuple(modules[n].weight.detach() for n in names)
            # D is d_out × d_in; the kind's weight view maps it to the parameter's layout (both views are
            # involutions: the identity, or the transpose of GPT-2's Conv1D).
            tangents = tuple(linear_kind(modules[n]).weight(SimpleNamespace(weight=deltas[n])).to(p.dtype).to(p.device)
                             for n, p in zip(names, primals))
            chunks = []
            for b in batches:
                kwargs = {k: v for k, v in b.items() if k != "labels"}
                outputs = lambda *ws: _logits(functional_call(model, dict(zip(params, ws)), args=(),  # noqa: E731
                                                              kwargs=kwargs), b)  # noqa: B023
                with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
                    _, tangent = jvp(outputs, primals, tangents)
                chunks.append(tangent.double())
            dirs[layer] = torch.cat(chunks)
    return dirs


def central_difference(model: nn.Module, names: list[str], deltas: Mapping[str, torch.Tensor], eps: float,
                       weight_of, evaluate) -> tuple:
    """(evaluate() at W + εΔ, evaluate() at W − εΔ) for the named modules together; weights restored bitwise."""
    modules = dict(model.named_modules())
    ws = {n: weight_of(modules[n]) for n in names}
    saved = {n: modules[n].weight.detach().clone() for n in names}
    out = []
    try:
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for n in names:
                    ws[n].add_((sign * eps * deltas[n]).to(ws[n].dtype).to(ws[n].device))
            out.append(evaluate())
            with torch.no_grad():
                for n in names:
                    modules[n].weight.copy_(saved[n])
    finally:
        with torch.no_grad():
            for n in names:
                modules[n].weight.copy_(saved[n])
    return out[0], out[1]


def coupling_gram(model: nn.Module, batches: list[dict], layer_modules: Mapping[int, list[str]],
                  deltas: Mapping[str, torch.Tensor], weight_of, reduce=None, exact: bool = False) -> tuple:
    """``coupling_matrix`` of the output directions over ``batches``, one batch at a time (K is a sum over
    rows, so only one batch's directions, layers × its outputs, are held at once), and the outputs counted.
    ``exact``: the directions by forward-mode AD (``jvp_directions``) instead of central differences."""
    K = None
    layers: list[int] = []
    outputs = 0
    for batch in batches:
        dirs = (jvp_directions(model, [batch], layer_modules, deltas) if exact
                else output_directions(model, [batch], layer_modules, deltas, weight_of))
        layers = sorted(dirs)
        F = torch.stack([dirs[l] for l in layers]).double()
        K = F @ F.t() if K is None else K + F @ F.t()
        outputs += F.shape[1]
        del dirs, F
    if K is None:
        return [], np.zeros((0, 0)), np.zeros((0, 0)), 0
    return (*_cosines(layers, reduce(K) if reduce is not None else K), outputs)


def _cosines(layers: list[int], K: torch.Tensor) -> tuple[list[int], np.ndarray, np.ndarray]:
    K = K.cpu().numpy()
    norms = np.sqrt(np.clip(np.diag(K), 1e-300, None))
    rho = K / norms[:, None] / norms[None, :]
    return layers, K, np.clip(rho, -1.0, 1.0)


def coupling_matrix(dirs: Mapping[int, torch.Tensor], reduce=None) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Layers, K (inner products of output directions) and ρ (their cosines). ``reduce`` (e.g. a sum over
    ranks, each holding its own rows of the directions) is applied to K before the cosines."""
    layers = sorted(dirs)
    F = torch.stack([dirs[l] for l in layers]).double()
    K = F @ F.t()
    return _cosines(layers, reduce(K) if reduce is not None else K)


def joint_gain(b: Iterable[float], rho: np.ndarray) -> float:
    """½ bᵀ K̃⁺ b with K̃_ab = ρ_ab √(b_a b_b): the coupled predicted gain of a layer set."""
    b = np.asarray(list(b), dtype=float)
    if b.size == 0:
        return 0.0
    root = np.sqrt(np.clip(b, 0, None))
    Kt = rho * root[:, None] * root[None, :]
    return 0.5 * float(b @ np.linalg.pinv(Kt, rcond=1e-10, hermitian=True) @ b)


def coupled_greedy(scores: Mapping[int, float], layers: list[int], rho: np.ndarray, k: int) -> list[int]:
    """Add, k times, the layer that raises the coupled joint gain most."""
    index = {l: i for i, l in enumerate(layers)}
    chosen: list[int] = []
    for _ in range(min(k, len(layers))):
        best, best_gain = None, -np.inf
        for l in layers:
            if l in chosen:
                continue
            cand = chosen + [l]
            idx = [index[c] for c in cand]
            g = joint_gain([scores[c] for c in cand], rho[np.ix_(idx, idx)])
            if g > best_gain + 1e-15:
                best, best_gain = l, g
        chosen.append(best)
    return sorted(chosen)
