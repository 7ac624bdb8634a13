"""The sweep's statistics S = Σ x xᵀ and C = Σ x gᵀ, computed by layerprof and by its peers, side by side.

Peers: plain forward and backward hooks written the obvious way (S and C by two matmuls per
module and batch); BackPACK's KFLR extension (its input factor is S / N, and the weight gradient
it returns alongside is C; it also computes the output-side factor, which layerprof does not);
curvlinops' KFACLinearOperator (input factors S / N; the gradient C by a plain backward). Each
runs on the same model and batches, one thread, process CPU time, interleaved, and is checked
against layerprof's S and C (max relative difference). Where a peer cannot run a case it is
recorded with the reason (BackPACK's Linear rejects 3-D inputs).

Cases: a wide MLP (4 × Linear(1024, 1024), tanh, 8 classes; 3 batches × 4,096 rows: BackPACK's
home ground) and a GPT-2-small-shaped decoder (12 × 768, random init, T = 512; 2 batches × 2).

    make bench-peers-deps && python bench/bench_peers.py [--cases mlp gpt2] [--reps 2]
"""
from __future__ import annotations

import argparse
import statistics
import time
import traceback

import torch
from torch import nn

import layerprof as lp
from layerprof.pipeline.benchmark import machine
from layerprof.utils.memory import PeakMemory


def mlp_case():
    """An nn.Sequential (BackPACK extends Sequential containers, not custom forwards)."""
    torch.manual_seed(0)
    d, layers = 1024, 4
    model = nn.Sequential(*[m for _ in range(layers) for m in (nn.Linear(d, d), nn.Tanh())], nn.Linear(d, 8)).eval()
    batches = [(torch.randn(4096, d), torch.randint(0, 8, (4096,))) for _ in range(3)]
    names = [str(2 * i) for i in range(layers)]
    return "wide MLP 4 × 1024, 3 × 4,096 rows", model, batches, names, nn.CrossEntropyLoss()


def gpt2_case():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=512, vocab_size=8192,
                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()
    ids = [torch.randint(0, 8192, (2, 512)) for _ in range(2)]
    names = [f"transformer.h.{i}.{m}" for i in range(12) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                                                     "mlp.c_proj")]
    return "GPT-2-small shape 12 × 768, 2 × 2 × 512 tokens", model, ids, names, None


def _module(model, name):
    return dict(model.named_modules())[name]


def _is_conv1d(m) -> bool:
    return type(m).__name__ == "Conv1D"


def _c_of(module, scale: float = 1.0):
    """C (d_in × d_out) from a weight's gradient: Linear stores out × in, GPT-2's Conv1D in × out."""
    g = module.weight.grad
    return (g if _is_conv1d(module) else g.t()) * scale


def _loss(model, batch, loss_fn):
    if loss_fn is None:  # causal LM: ids in, loss out
        return model(input_ids=batch, labels=batch).loss
    x, y = batch
    return loss_fn(model(x), y)


def _frozen_input_grads(model, batches, loss_fn):
    """Forward + backward of every batch with frozen weights (input gradients only), as the sweep runs."""
    from layerprof.model.batches import frozen_eval

    with frozen_eval(model):
        emb = model.get_input_embeddings() if loss_fn is None else None
        h = emb.register_forward_hook(lambda m, i, o: o.requires_grad_(True)) if emb is not None else None
        try:
            for b in batches:
                if loss_fn is None:
                    model(input_ids=b, labels=b).loss.backward()
                else:
                    x, y = b
                    loss_fn(model(x.clone().requires_grad_(True)), y).backward()
        finally:
            if h is not None:
                h.remove()


def run_layerprof(model, batches, names, loss_fn):
    """The sweep alone (taps + accumulation), as inside lp.profile: S and C of every target."""
    prof = lp.Profiler(model, targets=names)
    with prof:
        _frozen_input_grads(model, batches, loss_fn)
    return {n: (prof.acc.total(n).S, prof.acc.total(n).C) for n in names}


def run_hooks(model, batches, names, loss_fn):
    """The obvious way: a forward hook keeps x, a full backward hook adds xᵀx and xᵀg."""
    stats, keep, handles = {}, {}, []
    for n in names:
        m = _module(model, n)
        handles.append(m.register_forward_hook(lambda mod, i, o, n=n: keep.__setitem__(n, i[0].detach())))

        def bwd(mod, gin, gout, n=n):
            x = keep.pop(n)
            x = x.reshape(-1, x.shape[-1])
            g = gout[0].reshape(-1, gout[0].shape[-1])
            S, C = stats.get(n, (0, 0))
            stats[n] = (S + x.t() @ x, C + x.t() @ g)
        handles.append(m.register_full_backward_hook(bwd))
    try:
        _frozen_input_grads(model, batches, loss_fn)
    finally:
        for hd in handles:
            hd.remove()
    return stats


def run_backpack(model, batches, names, loss_fn):
    """BackPACK KFLR: input factor (S / N) per Linear, the weight gradient (C) alongside."""
    from backpack import backpack, extend
    from backpack.extensions import KFLR

    net = extend(model if loss_fn is not None else _Flat(model))
    lossf = extend(nn.CrossEntropyLoss(reduction="sum"))
    for p in net.parameters():
        p.requires_grad_(False)
    for n in names:
        _module(model, n).weight.requires_grad_(True)
    stats = {}
    for b in batches:
        x, y = (b, b.reshape(-1)) if loss_fn is None else b  # a causal LM: ids in, (N·T,) targets
        net.zero_grad()
        loss = lossf(net(x), y)
        with backpack(KFLR()):
            loss.backward()
        for n in names:
            w = _module(model, n).weight
            A = w.kflr[1] * x.shape[0]  # input factor, normalized by N
            S, C = stats.get(n, (0, 0))
            stats[n] = (S + A, C + _c_of(_module(model, n), 1.0 / x.shape[0]))  # summed loss: C of the mean is grad / N
    for p in net.parameters():
        p.requires_grad_(True)
    return stats


def run_curvlinops(model, batches, names, loss_fn):
    """curvlinops KFAC: input factors per Linear (S / N); C by a plain backward of the same batches."""
    from curvlinops import KFACLinearOperator

    params = [_module(model, n).weight for n in names]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    if loss_fn is None:  # a causal LM: logits flattened to (N·T, V), the ids as targets
        net = _Flat(model)
        data = [(b, b.reshape(-1)) for b in batches]
    else:
        net, data = model, [(x, y) for x, y in batches]
    op = KFACLinearOperator(net, nn.CrossEntropyLoss(), params, data, fisher_type="empirical",
                            check_deterministic=False, progressbar=False)
    op.compute_kronecker_factors() if hasattr(op, "compute_kronecker_factors") else None
    stats = {}
    grads = {n: 0 for n in names}
    for x, y in data:
        model.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        for n in names:
            grads[n] = grads[n] + _c_of(_module(model, n)).clone()
    factors = getattr(op, "_input_covariances", None) or getattr(op, "input_covariances", None) or {}
    rows = sum(y.shape[0] for _, y in data)
    for n, p in zip(names, params):
        key = next((k for k in factors if k.endswith(n + ".weight") or k == n + ".weight"), None)
        A = factors[key] * rows if key is not None else None
        stats[n] = (A, grads[n])
    for p in model.parameters():
        p.requires_grad_(True)
    return stats


class _Flat(nn.Module):
    """A causal LM as curvlinops takes it: ids in, (N·T, V) logits out."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, ids):
        logits = self.lm(input_ids=ids).logits
        return logits.reshape(-1, logits.shape[-1])


def agreement(ours: dict, theirs: dict) -> float | None:
    worst = 0.0
    for n, (S, C) in ours.items():
        if n not in theirs:
            return None
        tS, tC = theirs[n]
        Sref = torch.triu(S.double()) + torch.triu(S.double(), 1).t()
        for a, b in ((Sref, tS), (C.double(), tC)):
            if b is None or isinstance(b, int):
                continue
            b = b.double()
            worst = max(worst, float((a - b).abs().max() / a.abs().max().clamp_min(1e-30)))
    return worst


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=["mlp", "gpt2"])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--debug", action="store_true", help="print the traceback of a peer that fails")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{machine()}\n")
    for case in args.cases:
        title, model, batches, names, loss_fn = {"mlp": mlp_case, "gpt2": gpt2_case}[case]()
        runners = {"layerprof": run_layerprof, "plain hooks": run_hooks, "BackPACK KFLR": run_backpack,
                   "curvlinops KFAC": run_curvlinops}
        times = {k: [] for k in runners}
        mem, results, failed = {}, {}, {}
        for rep in range(args.reps):
            for name, fn in runners.items():
                if name in failed:
                    continue
                try:
                    with PeakMemory("cpu") as peak:
                        t = time.process_time()
                        out = fn(model, batches, names, loss_fn)
                        times[name].append(time.process_time() - t)
                    mem[name] = max(mem.get(name, 0), peak.bytes)
                    results[name] = out
                except Exception as e:  # noqa: BLE001 - a peer that cannot run the case is recorded
                    failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                    if args.debug:
                        traceback.print_exc()
        ours = results.get("layerprof")
        print(f"## {title}\n\n| method | process s (median of {args.reps}) | × layerprof | peak MiB above start | "
              "max rel. diff of S, C vs layerprof |\n|---|---:|---:|---:|---|")
        base = statistics.median(times["layerprof"]) if times["layerprof"] else float("nan")
        for name in runners:
            if name in failed:
                print(f"| {name} | – | – | – | cannot run: {failed[name]} |")
                continue
            t = statistics.median(times[name])
            diff = agreement(ours, results[name]) if name != "layerprof" else 0.0
            print(f"| {name} | {t:.2f} | {t / base:.2f} | {mem[name] / 2 ** 20:.0f} | "
                  f"{'–' if diff is None else f'{diff:.1e}'} |")
        print()


if __name__ == "__main__":
    main()
