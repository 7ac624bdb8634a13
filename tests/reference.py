"""Float64 twin of the profiler, written independently of layerprof's code path.

``reference_stats`` runs a float64 copy of the model with plain forward hooks that keep
each target's input x and output y (``retain_grad``), backpropagates the loss with every
parameter trainable, and sums N, S, C, q in NumPy float64. ``reference_columns`` derives
each card column with different linear algebra from layerprof's finalize (solves,
fractional matrix powers and explicit inverses instead of one eigen-decomposition).
"""
from __future__ import annotations

import copy
import math

import numpy as np
import scipy.linalg as sla
import torch


def reference_stats(model, batches, targets, loss_fn=None, double=True):
    """{name: dict(N, S, C, q)} in float64 NumPy, from autograd on a copy of ``model``."""
    ref = copy.deepcopy(model)
    if double:
        ref = ref.double()
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(True)
    mods = dict(ref.named_modules())
    stats = {}
    for batch in batches:
        calls = []
        handles = []
        for name in targets:
            def hook(module, args, out, name=name):
                out.retain_grad()
                calls.append((name, args[0].detach(), out))
            handles.append(mods[name].register_forward_hook(hook))
        try:
            kwargs = dict(batch)
            out = ref(**kwargs)
            loss = loss_fn(out, batch) if loss_fn else out.loss
            if not torch.isfinite(loss):
                continue
            loss.backward()
        finally:
            for h in handles:
                h.remove()
        mask = batch.get("attention_mask")
        for name, x, y in calls:
            kind_conv1d = type(mods[name]).__name__ == "Conv1D"
            d_in = x.shape[-1]
            X = x.reshape(-1, d_in).double().numpy()
            G = y.grad.reshape(-1, y.shape[-1]).double().numpy()
            if mask is not None and tuple(x.shape[:-1]) == tuple(mask.shape):
                keep = mask.reshape(-1).bool().numpy()
                X, G = X[keep], G[keep]
            s = stats.setdefault(name, {"N": 0, "S": 0.0, "C": 0.0, "q": 0.0, "conv1d": kind_conv1d})
            s["N"] += X.shape[0]
            s["S"] = s["S"] + X.T @ X
            s["C"] = s["C"] + X.T @ G
            s["q"] += float((G * G).sum())
        ref.zero_grad(set_to_none=True)
    return stats


def weight_of(model, name):
    m = dict(model.named_modules())[name]
    W = m.weight.detach().double().numpy()
    return W.T if type(m).__name__ == "Conv1D" else W


def reference_columns(N, S, C, q, W, rank, damping):
    """Card columns for one module, by independent float64 linear algebra."""
    d = S.shape[0]
    sigma = S / N
    tr = float(np.trace(sigma))
    lam = damping * tr / d
    A = sigma + lam * np.eye(d)
    rho2 = float(np.trace(C.T @ np.linalg.solve(A, C)))
    M = np.real(sla.fractional_matrix_power(A, -0.5)) @ C
    sv = sla.svdvals(M)
    mu = sla.eigvalsh(sigma)
    mu = np.clip(mu, 0, None)
    p = mu / mu.sum()
    p = p[p > 0]
    return {
        "rows": N,
        "resnorm": math.sqrt(rho2),
        "resnorm_rank": math.sqrt(float((sv[:rank] ** 2).sum())),
        "rank_capture": float((sv[:rank] ** 2).sum()) / rho2,
        "energy": tr,
        "cond": mu.max() / max(mu.min(), lam),
        "erank": math.exp(-float((p * np.log(p)).sum())),
        "noise_amp": (tr / d) * float(np.trace(np.linalg.inv(A))) / d,
        "grad_norm": float(np.linalg.norm(C)),
        "act_norm": math.sqrt(float(np.trace(S)) / N),
        "nfn": math.sqrt(float(np.trace(W @ sigma @ W.T)) / (float((W ** 2).sum()) * tr / d)),
        "resid_explained": rho2 / (N * q),
    }


COLUMNS = ["rows", "resnorm", "resnorm_rank", "rank_capture", "energy", "cond", "erank", "noise_amp", "grad_norm",
           "act_norm", "nfn", "resid_explained"]
