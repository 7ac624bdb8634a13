"""Reduce: sum the statistics over torch.distributed ranks before finalize (docs/method.md).

Every statistic is a plain sum, so a data-parallel sweep (DDP, FSDP, launched by torchrun
or accelerate) gives the card of one process over the union of the data by one SUM
all-reduce per tensor. Modules are reduced in one fixed order (the target order, the
same on every rank); a module that fired on some ranks only is zero-filled on the others
first, so every rank issues the same collectives. No home-made transport.
"""
from __future__ import annotations

import hashlib

import torch

from .accumulate import Accumulator, ModuleStats


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when torch.distributed is not initialized."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device_for_collectives() -> torch.device:
    """Where the process group's collectives run: the current CUDA device under NCCL, else the CPU."""
    backend = torch.distributed.get_backend()
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_stats(acc: Accumulator, names: list[str]) -> None:
    """Sum every half of every module's N, S, C, q, y2 over ranks, in place."""
    rank, size = world()
    if size == 1:
        return
    dist = torch.distributed
    dev = _device_for_collectives()
    # Which (half, module) exist anywhere: rows per half, summed.
    present = torch.tensor([[acc.halves[h][n].N if n in acc.halves[h] else 0 for n in names] for h in (0, 1)],
                           dtype=torch.int64, device=dev)
    dist.all_reduce(present)
    for h in (0, 1):
        half = acc.halves[h]
        reduced_S: dict[int, torch.Tensor] = {}  # id(local shared S) -> its reduced tensor
        for i, name in enumerate(names):
            total_rows = int(present[h, i])
            if total_rows == 0:
                continue
            st = half.get(name)
            if st is None:
                d_in, d_out = acc.dims[name]
                st = half[name] = ModuleStats(0, torch.zeros(d_in, d_in, dtype=acc.dtype, device=dev),
                                              torch.zeros(d_in, d_out, dtype=acc.dtype, device=dev),
                                              torch.zeros((), dtype=acc.dtype, device=dev))
            for t in (st.C, st.q):
                buf = t if t.device == dev else t.to(dev)
                dist.all_reduce(buf)
                if buf is not t:
                    t.copy_(buf)
            # y2 with a flag for "some rank does not know it", so that every rank issues the same collective.
            known = st.y2 is not None or st.N == 0  # a rank without this module's rows adds a known 0
            pair = torch.tensor([float(st.y2) if st.y2 is not None else 0.0, 0.0 if known else 1.0],
                                dtype=torch.float64, device=dev)
            dist.all_reduce(pair)
            st.y2 = pair[0].to(st.q.device, st.q.dtype) if float(pair[1]) == 0 else None
            # S may be one tensor shared by several modules here but not on another rank (a
            # rank without data for a module zero-fills it alone): reduce a copy per module,
            # so every rank issues the same collectives, and share the result again where
            # this rank shared it and the global sums agree.
            local = id(st.S)
            buf = st.S.to(dev, copy=True)
            dist.all_reduce(buf)
            buf = buf.to(st.S.device)
            prev = reduced_S.get(local)
            if prev is not None and torch.equal(prev, buf):
                buf = prev
            else:
                reduced_S.setdefault(local, buf)
            st.S = buf
            st.N = total_rows
    acc.rebuild_holders()
    calls = torch.tensor([acc.calls.get(n, 0) for n in names], dtype=torch.int64, device=dev)
    dist.all_reduce(calls)
    acc.calls = {n: int(c) for n, c in zip(names, calls) if int(c) > 0}
    batches = torch.tensor([acc.batches], dtype=torch.int64, device=dev)
    dist.all_reduce(batches)
    acc.batches = int(batches)


def all_reduce_meta(rows: int, data_hash: str, skipped: list[dict]) -> tuple[int, str, list[dict]]:
    """Global rows, a fingerprint of every rank's data (in rank order) and all skipped batches."""
    rank, size = world()
    if size == 1:
        return rows, data_hash, skipped
    dist = torch.distributed
    gathered: list = [None] * size
    dist.all_gather_object(gathered, {"rows": rows, "hash": data_hash, "skipped": skipped})
    digest = hashlib.sha256("".join(g["hash"] for g in gathered).encode()).hexdigest()[:16]
    skipped_all = [{**s, "rank": r} for r, g in enumerate(gathered) for s in g["skipped"]]
    return sum(g["rows"] for g in gathered), digest, skipped_all


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """The mean over ranks of per-module scalars (same keys on every rank); unchanged without a process group."""
    rank, size = world()
    if size == 1 or not values:
        return values
    keys = sorted(values)
    total = all_reduce_sum(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64))
    return {k: float(v) / size for k, v in zip(keys, total.tolist())}


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of a float64 CPU tensor of the same shape on every rank; ``t`` itself without a
    process group."""
    if world()[1] == 1:
        return t
    buf = t.to(_device_for_collectives(), copy=True)
    torch.distributed.all_reduce(buf)
    return buf.cpu()
