"""GPU backends at full size against the float64 reference (run only where CUDA exists).

Same analytic tolerance as tests/test_stats.py: |S − S_ref| ≤ 2(n+1)·u·(|X|ᵀ|X|), u = 2⁻²⁴,
valid for fp32 accumulation in any order (tensor-core products of bf16/fp16 are exact in
fp32). Triton kernels compile for the GPU when LAYERPROF_TEST_TRITON_GPU=1 (set by
bench/gpu_check.sh); otherwise conftest runs them interpreted and they are tested on the CPU.
"""
import os

import pytest
import torch

import layerprof as lp
from conftest import make_batches, make_model, random_corrections
from layerprof.stats import ops

_no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def requires_cuda(test):
    """The `gpu` marker (bench/gpu_check.sh selects by it) and a skip that says why, together."""
    return pytest.mark.gpu(_no_cuda(test))
U32 = 2.0 ** -24


def gpu_backends():
    names = []
    if torch.cuda.is_available():
        table = ops.backends()
        if table["cuda"].available:
            names.append("cuda")
        if table["triton"].available and os.environ.get("LAYERPROF_TEST_TRITON_GPU") == "1":
            names.append("triton")
    return names or ["none"]


@requires_cuda
@pytest.mark.parametrize("backend", gpu_backends())
@pytest.mark.parametrize("d_in,d_out,rows", [(1, 1, 1), (59, 7, 1025), (257, 3, 4099), (1024, 2048, 8192)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gpu_stats_update_matches_reference(backend, d_in, d_out, rows, dtype):
    if backend == "none":
        pytest.skip("no GPU backend built here (see layerprof doctor)")
    dev = "cuda"
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(rows, d_in, generator=g) * 3 + 0.5).to(dtype)
    gr = torch.randn(rows, d_out, generator=g).to(dtype)
    mask = torch.rand(rows, generator=g) > 0.3
    S, C, q = torch.zeros(d_in, d_in, device=dev), torch.zeros(d_in, d_out, device=dev), torch.zeros((), device=dev)
    ops.op(backend, "stats_update")(S, C, q, x.to(dev), gr.to(dev), mask.to(dev))
    S64, C64, q64 = (torch.zeros_like(t, dtype=torch.float64, device="cpu") for t in (S, C, q))
    ops.op("reference", "stats_update")(S64, C64, q64, x, gr, mask)
    xs, gs = x[mask].double().abs(), gr[mask].double().abs()
    n = xs.shape[0]
    assert (torch.triu(S.cpu().double() - S64).abs() <= torch.triu(2 * (n + 1) * U32 * (xs.t() @ xs)) + 1e-30).all()
    assert ((C.cpu().double() - C64).abs() <= 2 * (n + 1) * U32 * (xs.t() @ gs) + 1e-30).all()
    assert abs(float(q) - float(q64)) <= 2 * (n * d_out + 1) * U32 * float(q64) + 1e-30


@requires_cuda
@pytest.mark.parametrize("backend", gpu_backends())
def test_gpu_card_equals_torch_card(backend):
    if backend == "none":
        pytest.skip("no GPU backend built here (see layerprof doctor)")
    model = make_model("llama").cuda()
    batches = make_batches(n=4)
    ref = lp.profile(model, batches, rank=4, progress=False, backend="torch")
    card = lp.profile(model, batches, rank=4, progress=False, backend=backend)
    assert card.ranking() == ref.ranking()
    for a, b in zip(ref.modules, card.modules):
        tol = a.rows * U32 * max(1.0, a.cond ** 0.5) * 4
        assert abs(a.resnorm - b.resnorm) <= tol * a.resnorm, a.name


@requires_cuda
@pytest.mark.parametrize("backend", gpu_backends())
def test_gpu_sketch_mode_with_bf16_model_matches_torch(backend):
    # The 8B-class path: bf16 X with fp32 GΩ reaches the GPU ops; the dtype contract widens them.
    if backend == "none":
        pytest.skip("no GPU backend built here (see layerprof doctor)")
    model = make_model("llama").cuda().to(torch.bfloat16)
    batches = make_batches(n=3)
    ref = lp.profile(model, batches, rank=4, progress=False, backend="torch", sketch=8)
    card = lp.profile(model, batches, rank=4, progress=False, backend=backend, sketch=8)
    assert card.meta["settings"]["sketched_modules"] > 0
    for a, b in zip(ref.modules, card.modules):
        assert b.resnorm == pytest.approx(a.resnorm, rel=1e-3), a.name


@requires_cuda
def test_gpu_cuda_kernel_is_bitwise_reproducible_under_deterministic_algorithms():
    """torch.use_deterministic_algorithms(True): one block per tile and q by torch's reduction, so two
    runs give bitwise the same S, C and q (the default split-K atomics may differ in the last bits)."""
    if not ops.backends()["cuda"].available:
        pytest.skip("no cuda backend built here (see layerprof doctor)")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20000, 192, generator=g).cuda()
    gr = torch.randn(20000, 96, generator=g).cuda()
    mask = (torch.rand(20000, generator=g) > 0.2).cuda()
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            S, C, q = torch.zeros(192, 192, device="cuda"), torch.zeros(192, 96, device="cuda"), torch.zeros((), device="cuda")
            ops.op("cuda", "stats_update")(S, C, q, x, gr, mask)
            runs.append((torch.triu(S), C, q))
    finally:
        torch.use_deterministic_algorithms(before)
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@requires_cuda
def test_gpu_bf16_coupling_by_forward_mode_ad_matches_cpu_float32():
    """The default placement's coupling on a bfloat16 model on the GPU (forward-mode AD, math attention):
    its output directions match the float32 model's central differences on the CPU for the same corrections."""
    from layerprof.predict.coupling import jvp_directions, output_directions
    from layerprof.model.targets import linear_kind

    model = make_model("llama").eval()
    batches = make_batches(n=1)
    layer_modules, deltas = random_corrections(model)
    ref = output_directions(model, batches, layer_modules, deltas, lambda m: linear_kind(m).weight(m))
    gpu = make_model("llama").to("cuda", torch.bfloat16)
    gpu.load_state_dict({k: v.to(torch.bfloat16) for k, v in model.state_dict().items()})
    got = jvp_directions(gpu, [{k: v.cuda() for k, v in b.items()} for b in batches], layer_modules, deltas)
    for layer in ref:
        a, b = ref[layer], got[layer].cpu()
        assert float((a * b).sum() / (a.norm() * b.norm())) > 0.999, layer
    card = lp.profile(gpu, [{k: v.cuda() for k, v in b.items()} for b in make_batches(n=3)], rank=4, progress=False)
    assert card.meta["coupling"]["method"].startswith("forward-mode AD")


@requires_cuda
def test_measured_step_cost_on_the_gpu_leaves_a_bfloat16_model_untouched():
    # The timer synchronises the device around each step; adapters are fp32 on a bf16 model.
    from conftest import assert_untouched, snapshot

    model = make_model("llama").to("cuda", torch.bfloat16)
    batches = [{k: v.cuda() for k, v in b.items()} for b in make_batches(n=2)]
    card = lp.profile(model, batches, coupling=False, progress=False)
    snap = snapshot(model)
    measured = lp.measure_step_cost(model, batches, card, steps=2)
    assert_untouched(model, snap)
    sc = measured.meta["step_cost"]
    assert sc["device"].startswith("cuda") and all(p["seconds"] > 0 for p in sc["placements"])
