"""Triton kernels for the accumulation ops of ``layerprof.stats.ops.stats``.

One kernel, ``_stats_kernel``, computes tiles of S = XᵀX (upper-triangle tiles only) and of
C = XᵀG from a split of the rows, and atomically adds them into the fp32 accumulators;
the programs that own the first C tile row also add ‖G‖² of their columns into q.

    grid = (tiles, row_splits); tiles = nt(nt+1)/2 upper S tiles [+ C tiles]
    FLOPs: 2·rows·(tile_i,j) per tile; the lower triangle is never computed
    traffic: each program reads BLOCK rows × (BLOCK_M + BLOCK_N) inputs per step; rows
             are split so that enough programs exist to fill the device, and masked
             rows load as zeros (no gather copy)

bf16/fp16 inputs go through tensor cores with fp32 accumulation (products of 8/11-bit
mantissas are exact in fp32); fp32 inputs use IEEE fp32 dots (no TF32), so the result
meets the same error bound as a plain fp32 GEMM. On the CPU the kernels run under
``TRITON_INTERPRET=1`` (tests, small shapes).
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl


@triton.jit
def _stats_kernel(x_ptr, g_ptr, m_ptr, s_ptr, c_ptr, q_ptr, ti_ptr, tj_ptr,
                  rows, d_in, d_out, rows_per_split,
                  sxr, sxc, sgr, sgc, ssr, ssc, scr, scc,
                  n_s_tiles,
                  HAS_MASK: tl.constexpr, IEEE: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    tile = tl.program_id(0)
    split = tl.program_id(1)
    ti = tl.load(ti_ptr + tile)
    tj = tl.load(tj_ptr + tile)
    is_s = tile < n_s_tiles
    offs_m = ti * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tj * BLOCK_N + tl.arange(0, BLOCK_N)
    n_limit = tl.where(is_s, d_in, d_out)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    sq = tl.zeros((BLOCK_N,), dtype=tl.float32)
    r_start = split * rows_per_split
    r_end = tl.minimum(r_start + rows_per_split, rows)
    for r0 in range(r_start, r_end, BLOCK_K):
        offs_k = r0 + tl.arange(0, BLOCK_K)
        keep = offs_k < r_end
        if HAS_MASK:
            keep = keep & (tl.load(m_ptr + offs_k, mask=offs_k < r_end, other=0) != 0)
        a = tl.load(x_ptr + offs_k[None, :] * sxr + offs_m[:, None] * sxc,
                    mask=keep[None, :] & (offs_m[:, None] < d_in), other=0.0)
        if is_s:
            b = tl.load(x_ptr + offs_k[:, None] * sxr + offs_n[None, :] * sxc,
                        mask=keep[:, None] & (offs_n[None, :] < d_in), other=0.0)
        else:
            b = tl.load(g_ptr + offs_k[:, None] * sgr + offs_n[None, :] * sgc,
                        mask=keep[:, None] & (offs_n[None, :] < d_out), other=0.0)
            bf = b.to(tl.float32)
            sq += tl.sum(bf * bf, axis=0)
        if IEEE:
            acc += tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(a, b)
    out_mask = (offs_m[:, None] < d_in) & (offs_n[None, :] < n_limit)
    if is_s:
        tl.atomic_add(s_ptr + offs_m[:, None] * ssr + offs_n[None, :] * ssc, acc, mask=out_mask)
    else:
        tl.atomic_add(c_ptr + offs_m[:, None] * scr + offs_n[None, :] * scc, acc, mask=out_mask)
        if ti == 0:
            tl.atomic_add(q_ptr, tl.sum(sq, axis=0))


@functools.lru_cache(maxsize=256)
def _tiles(d_in: int, d_out: int, bm: int, bn: int, with_s: bool, with_c: bool, device: str):
    """Tile coordinates: upper-triangle S tiles (square tiles, bm == bn), then C tiles."""
    ti, tj = [], []
    nt = triton.cdiv(d_in, bm)
    if with_s:
        for i in range(nt):
            for j in range(i, triton.cdiv(d_in, bn)):
                if j * bn + bn > i * bm:  # the tile touches the upper triangle
                    ti.append(i)
                    tj.append(j)
    n_s = len(ti)
    if with_c:
        for i in range(nt):
            for j in range(triton.cdiv(d_out, bn)):
                ti.append(i)
                tj.append(j)
    t = torch.tensor([ti, tj], dtype=torch.int32, device=device)
    return t[0].contiguous(), t[1].contiguous(), n_s


def _interpreted_bf16(x, g) -> bool:
    # The CPU interpreter mishandles bf16 tl.dot (NumPy has no bf16); widening to fp32 first
    # gives the same products exactly, so interpreted runs stay a faithful test of the kernel.
    return os.environ.get("TRITON_INTERPRET") == "1" and torch.bfloat16 in (x.dtype, getattr(g, "dtype", None))


def _launch(S, C, q, x, g, mask, with_s: bool, with_c: bool) -> None:
    acc = S if S is not None else C
    if acc.dtype != torch.float32:
        raise TypeError("the triton backend accumulates in float32; use backend='cpp' or 'torch' for float64")
    rows, d_in = x.shape
    d_out = g.shape[1] if g is not None else 1
    if rows == 0:
        return
    block = 32 if max(d_in, d_out) <= 64 else 64
    bk = 32
    ti, tj, n_s = _tiles(d_in, d_out, block, block, with_s, with_c, str(x.device))
    if ti.numel() == 0:
        return
    # Enough row splits to give the device ~4 programs per SM; one split when interpreted.
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 1
    splits = max(1, min(triton.cdiv(rows, 4 * bk), (4 * sms + ti.numel() - 1) // ti.numel()))
    rows_per_split = triton.cdiv(triton.cdiv(rows, splits), bk) * bk
    splits = triton.cdiv(rows, rows_per_split)
    m = mask.to(torch.int8) if mask is not None else x
    gg = g if g is not None else x
    s_t = S if S is not None else acc
    c_t = C if C is not None else acc
    q_t = q if q is not None else acc
    _stats_kernel[(ti.numel(), splits)](
        x, gg, m, s_t, c_t, q_t, ti, tj, rows, d_in, d_out, rows_per_split,
        x.stride(0), x.stride(1), gg.stride(0), gg.stride(1), s_t.stride(0), s_t.stride(1),
        c_t.stride(0), c_t.stride(1), n_s,
        HAS_MASK=mask is not None, IEEE=x.dtype == torch.float32 or _interpreted_bf16(x, g),
        BLOCK_M=block, BLOCK_N=block, BLOCK_K=bk)


def stats_update_triton(S, C, q, x, g, mask=None) -> None:
    """S += XᵀX (upper tiles), C += XᵀG, q += ‖G‖² in one launch (see module docstring)."""
    _launch(S, C, q, x, g, mask, True, True)


def gram_update_triton(S, x, mask=None) -> None:
    _launch(S, None, None, x, None, mask, True, False)


def cross_update_triton(C, x, g, mask=None) -> None:
    q = torch.zeros((), dtype=C.dtype, device=C.device)
    _launch(None, C, q, x, g, mask, False, True)


def sketch_update_triton(CO, x, g, omega, mask=None) -> None:
    """CΩ += Xᵀ(GΩ): GΩ by torch's GEMM (small: rows × k), then the cross kernel."""
    # GΩ in fp32; the kernel takes one input dtype, so X and GΩ meet at the wider one (the ops' dtype
    # contract, layerprof.stats.ops.same_dtype, written out here because kernels import nothing of the package:
    # bf16 X becomes fp32, never GΩ bf16).
    common = torch.promote_types(x.dtype, torch.float32)
    go = g.float() @ omega.float()
    cross_update_triton(CO, x.to(common), go.to(common), mask)
