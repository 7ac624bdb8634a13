"""Accumulation ops: every backend against the float64 reference on a grid of shapes, dtypes and masks.

Tolerance (analytic, not tuned): a sum of n products computed in fp32 from exactly widened
inputs, in any order, has error |ŝ − s| ≤ γ_n Σ|a_i b_i| with γ_n ≈ n·u, u = 2⁻²⁴ (Higham,
Accuracy and Stability of Numerical Algorithms, §3.1). So we check
|S − S_ref| ≤ n·u·(|X|ᵀ|X|) elementwise (n = rows accumulated), and likewise for C, q and
the sketch. Only the upper triangle of S is part of the contract.
"""
import importlib.util
import os

import pytest
import torch

from layerprof.stats import ops
from layerprof.stats.ops import op

U32 = 2.0 ** -24
CPU_BACKENDS = ["torch"]
if ops.backends()["cpp"].available:
    CPU_BACKENDS.append("cpp")
if importlib.util.find_spec("triton") is not None and os.environ.get("TRITON_INTERPRET") == "1":
    CPU_BACKENDS.append("triton")  # interpreted (conftest sets TRITON_INTERPRET=1 unless testing on a GPU)

requires_extension = pytest.mark.skipif(not ops.backends()["cpp"].available,
                                        reason=ops.backends()["cpp"].reason)


def _case(d_in, d_out, rows, dtype, mask_kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, d_in, generator=g) * 3 + 0.5).to(dtype)
    gr = torch.randn(rows, d_out, generator=g).to(dtype)
    if mask_kind == "none":
        mask = None
    elif mask_kind == "holes":
        mask = torch.rand(rows, generator=g) > 0.3
    else:
        mask = torch.zeros(rows, dtype=torch.bool)
    return x, gr, mask


def _bound(a, b, n):
    return 2 * (n + 1) * U32 * (a.double().abs().t() @ b.double().abs()) + 1e-300


GRID = [(d_in, d_out, rows, dtype, mk)
        for d_in, d_out in [(1, 1), (59, 7), (64, 64), (257, 3)]
        for rows in [0, 1, 1025]
        for dtype in [torch.float32, torch.bfloat16, torch.float16]
        for mk in ["none", "holes", "all_masked"]]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("d_in,d_out,rows,dtype,mask_kind", GRID,
                         ids=[f"{a}x{b}-r{r}-{str(t)[6:]}-{m}" for a, b, r, t, m in GRID])
def test_stats_update_matches_reference(backend, d_in, d_out, rows, dtype, mask_kind):
    x, g, mask = _case(d_in, d_out, rows, dtype, mask_kind)
    S, C, q = torch.zeros(d_in, d_in), torch.zeros(d_in, d_out), torch.zeros(())
    S64, C64, q64 = (t.double() for t in (S, C, q))
    # Two calls: accumulation into existing sums is part of the contract.
    for _ in range(2):
        op(backend, "stats_update")(S, C, q, x, g, mask)
        op("reference", "stats_update")(S64, C64, q64, x, g, mask)
    xs, gs = (x, g) if mask is None else (x[mask], g[mask])
    n = 2 * xs.shape[0]
    assert (torch.triu(S.double() - S64).abs() <= torch.triu(_bound(xs, xs, n))).all()
    assert ((C.double() - C64).abs() <= _bound(xs, gs, n)).all()
    assert abs(float(q) - float(q64)) <= 2 * (n * d_out + 1) * U32 * float(q64) + 1e-300
    if mask_kind == "all_masked" or rows == 0:
        assert torch.triu(S).abs().sum() == 0 and C.abs().sum() == 0 and float(q) == 0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gram_cross_sketch_ops(backend, dtype):
    x, g, mask = _case(59, 33, 300, dtype, "holes", seed=4)
    omega = torch.randn(33, 8, generator=torch.Generator().manual_seed(5))
    xs, gs = x[mask], g[mask]
    n = xs.shape[0]
    S, S64 = torch.zeros(59, 59), torch.zeros(59, 59, dtype=torch.float64)
    op(backend, "gram_update")(S, x, mask)
    op("reference", "gram_update")(S64, x, mask)
    assert (torch.triu(S.double() - S64).abs() <= torch.triu(_bound(xs, xs, n))).all()
    C, C64 = torch.zeros(59, 33), torch.zeros(59, 33, dtype=torch.float64)
    op(backend, "cross_update")(C, x, g, mask)
    op("reference", "cross_update")(C64, x, g, mask)
    assert ((C.double() - C64).abs() <= _bound(xs, gs, n)).all()
    K, K64 = torch.zeros(59, 8), torch.zeros(59, 8, dtype=torch.float64)
    op(backend, "sketch_update")(K, x, g, omega, mask)
    op("reference", "sketch_update")(K64, x, g, omega, mask)
    # Two nested fp32 products: GΩ (33 terms) then Xᵀ(GΩ) (n terms), plus rounding GΩ to the input dtype
    # for low-precision inputs (the triton path keeps it fp32; all paths meet the fp32 bound here).
    go_abs = gs.double().abs() @ omega.double().abs()
    bound = 2 * (n + 34) * U32 * (xs.double().abs().t() @ go_abs) + 1e-300
    assert ((K.double() - K64).abs() <= bound).all()


@requires_extension
def test_cpp_fp64_accumulators_are_exact_to_fp64():
    x, g, mask = _case(59, 7, 1025, torch.float32, "holes")
    S, C, q = (torch.zeros(s, dtype=torch.float64) for s in ((59, 59), (59, 7), ()))
    op("cpp", "stats_update")(S, C, q, x, g, mask)
    S64, C64, q64 = torch.zeros_like(S), torch.zeros_like(C), torch.zeros_like(q)
    op("reference", "stats_update")(S64, C64, q64, x, g, mask)
    xs = x[mask].double().abs()
    # Both sum the same fp64 products; only the order differs (n·u64 bound, u64 = 2^-53).
    assert (torch.triu(S - S64).abs() <= 1025 * 2.0 ** -53 * (xs.t() @ xs)).all()


@requires_extension
def test_cpp_checks_name_the_problem():
    x = torch.randn(10, 4)
    with pytest.raises(RuntimeError, match=r"S must be \(d_in, d_in\) = \(4, 4\)"):
        op("cpp", "gram_update")(torch.zeros(3, 3), x)
    with pytest.raises(RuntimeError, match="mask must have shape"):
        op("cpp", "gram_update")(torch.zeros(4, 4), x, torch.ones(9, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="S must be float32 or float64"):
        op("cpp", "gram_update")(torch.zeros(4, 4, dtype=torch.float16), x)


def test_unknown_backend_named_in_error():
    with pytest.raises(ValueError, match="unknown backend 'fast'.*auto"):
        ops.resolve_backend("fast")


def test_auto_resolves_without_gpu_and_unavailable_backend_falls_back_with_warning():
    expected = "cpp" if ops.backends()["cpp"].available else "torch"
    assert ops.resolve_backend("auto", "cpu") == expected
    table = ops.backends()
    assert all(st.reason for st in table.values())
    ops._warned.discard("cuda")
    with pytest.warns(UserWarning, match="backend 'cuda' is not available"):
        assert ops.resolve_backend("cuda", "cpu") == "torch"


MIXED = [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16), (torch.float16, torch.float32),
         (torch.bfloat16, torch.float16)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("x_dtype,g_dtype", MIXED, ids=[f"x{str(a)[6:]}-g{str(b)[6:]}" for a, b in MIXED])
def test_mixed_input_dtypes_follow_one_contract(backend, x_dtype, g_dtype):
    # Sketch mode hands the ops bf16 X with fp32 GΩ: every backend widens to the common dtype
    # and meets the same fp32 bound against the reference computed from the same inputs.
    x, _, mask = _case(59, 33, 300, x_dtype, "holes", seed=6)
    g = torch.randn(300, 33, generator=torch.Generator().manual_seed(7)).to(g_dtype)
    xs, gs = x[mask], g[mask]
    n = xs.shape[0]
    S, C, q = torch.zeros(59, 59), torch.zeros(59, 33), torch.zeros(())
    S64, C64, q64 = (t.double() for t in (S, C, q))
    op(backend, "stats_update")(S, C, q, x, g, mask)
    op("reference", "stats_update")(S64, C64, q64, x, g, mask)
    assert (torch.triu(S.double() - S64).abs() <= torch.triu(_bound(xs, xs, n))).all()
    assert ((C.double() - C64).abs() <= _bound(xs, gs, n)).all()
    C2, C264 = torch.zeros(59, 33), torch.zeros(59, 33, dtype=torch.float64)
    op(backend, "cross_update")(C2, x, g, mask)
    op("reference", "cross_update")(C264, x, g, mask)
    assert ((C2.double() - C264).abs() <= _bound(xs, gs, n)).all()
    S3, C3, q3 = torch.zeros(59, 59), torch.zeros(59, 33), torch.zeros(())
    ops.stats_update(backend, S3, C3, q3, x, g, mask)  # the accumulator's entry point
    assert torch.equal(torch.triu(S3), torch.triu(S)) and torch.equal(C3, C)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_sketch_mode_with_bf16_inputs_matches_the_torch_backend(backend):
    from layerprof.stats.accumulate import Accumulator

    x, g, mask = _case(40, 96, 200, torch.bfloat16, "holes", seed=8)
    results = {}
    for b in ("torch", backend):
        acc = Accumulator({"m": (40, 96)}, torch.float32, b, sketch=16)
        acc.update("m", x, g, mask, int(mask.sum()))
        acc.commit()
        st = acc.total("m")
        results[b] = (torch.triu(st.S), st.C, st.q)
    assert acc.sketched("m")
    for a, b in zip(results["torch"], results[backend]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def _op_samples(name, dtype=torch.float32):
    """Arguments of op ``name`` (accumulators first, as in the schema), masked and unmasked."""
    gen = torch.Generator().manual_seed(0)
    x, g = torch.randn(37, 12, generator=gen), torch.randn(37, 5, generator=gen)
    mask = torch.rand(37, generator=gen) > 0.3
    omega = torch.randn(5, 3, generator=gen)
    acc = {"gram_update": lambda: (torch.zeros(12, 12, dtype=dtype), x),
           "cross_update": lambda: (torch.zeros(12, 5, dtype=dtype), x, g),
           "stats_update": lambda: (torch.zeros(12, 12, dtype=dtype), torch.zeros(12, 5, dtype=dtype),
                                    torch.zeros((), dtype=dtype), x, g),
           "sketch_update": lambda: (torch.zeros(12, 3, dtype=dtype), x, g, omega)}[name]
    return [(*acc(), None), (*acc(), mask)]


ACCUMULATORS = {"gram_update": 1, "cross_update": 1, "stats_update": 3, "sketch_update": 1}


@pytest.mark.parametrize("name", list(ACCUMULATORS))
@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b in ("cpp", "triton")])
def test_ops_are_torch_library_ops_that_pass_opcheck(backend, name):
    """The native ops (declared in csrc/binding.cpp) and the Triton ones (layerprof.stats.ops.library):
    schema with the accumulators marked mutable, fake implementations, dispatch — as opcheck checks them."""
    target = ops._op(backend, name)  # the registered op itself, without the dtype-contract wrapper
    assert isinstance(target, (torch._ops.OpOverloadPacket, torch._library.custom_ops.CustomOpDef)), target
    n = ACCUMULATORS[name]
    for args in _op_samples(name):
        torch.library.opcheck(target, args)
        # And the op adds what the float64 reference adds.
        got = [a.clone() if i < n else a for i, a in enumerate(args)]
        ref = [a.clone().double() if i < n else a for i, a in enumerate(args)]
        ops.op(backend, name)(*got)
        getattr(ops.stats, f"{name}_reference")(*ref)
        for a, r in zip(got[:n], ref[:n]):
            if a.dim() == 2 and a.shape[0] == a.shape[1]:  # S: only the upper triangle is in the contract
                a, r = torch.triu(a), torch.triu(r)
            torch.testing.assert_close(a.double(), r, rtol=1e-4, atol=1e-4)


def test_auto_never_picks_an_unmeasured_gpu_kernel():
    """On CUDA, auto is torch's cuBLAS path until bench/gpu_check.sh measures a custom kernel faster."""
    assert ops.AUTO["cuda"] == ("torch",)
    assert ops.resolve_backend("auto", "cuda") == "torch"
    assert ops.resolve_backend("auto", "cpu") in ops.AUTO["cpu"]


def test_accumulator_halves_take_the_staged_buffers_and_stay_exact():
    """A half's first commit takes the batch's Gram and staged C (no copy); every later batch adds into them.

    Five batches: modules a and b read one shared input (one Gram, one S between them), c reads its own
    input, and in batch 3 b reads a second input too (its S splits off). Each half must equal the float64
    sum of its own batches, and no buffer a half owns may be handed to a later batch's staging."""
    from layerprof.stats.accumulate import Accumulator

    gen = torch.Generator().manual_seed(3)
    dims = {"a": (6, 4), "b": (6, 3), "c": (5, 2)}
    acc = Accumulator(dims, torch.float32, "torch")
    want = tuple({n: [torch.zeros(d_in, d_in, dtype=torch.float64), torch.zeros(d_in, d_out, dtype=torch.float64)]
                  for n, (d_in, d_out) in dims.items()} for _ in range(2))
    for batch in range(5):
        x = torch.randn(7, 6, generator=gen)
        xc = torch.randn(7, 5, generator=gen)
        calls = [("a", x, 1), ("b", x, 1), ("c", xc, 2)]
        if batch == 3:
            calls.append(("b", torch.randn(7, 6, generator=gen), 3))
        for name, xi, iid in calls:
            g = torch.randn(7, dims[name][1], generator=gen)
            acc.update(name, xi, g, None, 7, input_id=iid)
            w = want[batch % 2][name]
            w[0] += xi.double().t() @ xi.double()
            w[1] += xi.double().t() @ g.double()
        staged = {n: st.C for n, st in acc.pending.items()}
        grams = dict(acc.grams)
        acc.commit()
        if batch < 2:  # the half's first commit: its C and (unshared-key) S are the staged buffers themselves
            half = acc.halves[batch]
            assert all(half[n].C is staged[n] for n in dims)
            assert half["a"].S is grams[1] and half["a"].S is half["b"].S and half["c"].S is grams[2]
        owned = {id(t) for h in acc.halves for st in h.values() for t in (st.S, st.C)}
        assert not owned & {id(st.C) for st in acc.pending.values()}
        assert not owned & {id(S) for bufs in acc._free.values() for S in bufs}
    for h in range(2):
        for n in dims:
            got = acc.halves[h][n]
            torch.testing.assert_close(torch.triu(got.S.double()), torch.triu(want[h][n][0]), rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(got.C.double(), want[h][n][1], rtol=1e-5, atol=1e-4)
    assert acc.halves[1]["a"].S is not acc.halves[1]["b"].S  # b read a second input in batch 3: split off


_BAD_CALLS = {  # one broken argument per op: what the fake must reject while tracing, before any kernel
    "gram_update": (lambda a: (torch.zeros(11, 12), *a[1:]), "S must be"),
    "cross_update": (lambda a: (a[0], a[1], a[2][:30], None), "same rows"),
    "stats_update": (lambda a: (a[0], a[1], torch.zeros(2), *a[3:]), "q must be a scalar"),
    "sketch_update": (lambda a: (a[0], a[1], a[2], torch.zeros(4, 3), a[4]), "omega must be"),
}


@pytest.mark.parametrize("name", list(ACCUMULATORS))
@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b in ("cpp", "triton")])
def test_fakes_state_the_shape_contract(backend, name):
    """Under fake tensors (what torch.compile traces with) a good call passes and a bad shape fails
    with the kernel's own message, though no kernel runs."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    target = ops._op(backend, name)
    good = _op_samples(name)[1]
    make_bad, message = _BAD_CALLS[name]
    bad = make_bad(good)  # built from real tensors, then faked like the good call
    with FakeTensorMode() as mode:
        fake = lambda args: [None if a is None else mode.from_tensor(a) for a in args]  # noqa: E731
        target(*fake(good))
        with pytest.raises(Exception, match=message):
            target(*fake(bad))
        mask = torch.zeros(5, dtype=torch.bool)
        with pytest.raises(Exception, match="mask must have shape"):
            target(*fake([*good[:-1], mask]))
