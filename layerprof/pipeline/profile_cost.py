"""What profiling a model will cost, before anything runs: FLOPs, time on a named device, memory.

`layerprof bench --plan MODEL_DIR` builds the model on the meta device (no weights are read),
finds the target modules as ``profile`` would, and models:

* the plain frozen forward + backward: 2·d_in·d_out FLOPs per token and module forward, the
  same again backward (input gradients only), plus the output head; attention's T×T work is
  left out (the model is of the linear layers);
* the sweep's accumulation on top: S += XᵀX for each distinct input (upper triangle: d_in² per
  token) and C += XᵀG (2·d_in·d_out per token), fp32 GEMMs, and nfn's ‖W x‖² read off each module's
  output (y − b, squared, summed: 3·d_out per token, elementwise, counted as FLOPs at the GEMM rate);
* finalize, float64, per distinct input: eigenvalues of Σ (≈ 4/3·d³, a tridiagonal reduction,
  memory-bound) and one Cholesky factor (d³/3); per module: two triangular solves (2·d_in²·d_out),
  the leading spectrum (the smaller Gram matrix and its eigenvalues, or block Krylov above 2048)
  and ‖W‖² for nfn (2·d_out·d_in; tr(WΣWᵀ) comes from the sweep); and, as the default score asks
  (``rank_cross``), each split half's top-r singular subspace of the whitened C (short side m, long
  side n): up to 2048 the eigenvectors of the m × m Gram matrix (2·m²·n, and ≈ 4·m³ for an
  eigendecomposition with vectors: the GPU's path, an upper bound for the CPU's Lanczos), above it
  block Krylov (≈ 52·r·m·n), plus the two projections (4·r·m·n);
* the coupling matrix, when asked (``coupling=True``, as ``profile(coupling=True)``; the default
  placement does not need it; ``layerprof.predict.coupling``): two forwards per layer over at most
  ``coupling_tokens`` tokens (bf16), and one corrections solve per module (float64: a Cholesky
  factor per distinct input, d³/3, and 2·d_in²·d_out for its solve), when the statistics are dense
  in one sweep (else the profile skips it);
* memory: the statistics (``layerprof.pipeline.memory_plan``), the tap inputs of one batch, and finalize's
  float64 working set: Σ and its Cholesky factor for one input at a time (finalize releases an
  input's factors after its last module) plus one module's C and its whitened halves.

Times come from a device's peak rates times an efficiency per kind of work (``DEVICES``): a
model, to be replaced by measurements (`bench/gpu_check.sh` on a GPU, `bench/bench_wide.py` here).
Two figures do not depend on the assumed efficiencies: finalize at the device's full FP64 peak (a
floor for exact float64 columns: if even that is a large share of the sweep, no kernel tuning gets
under it) and the calibration tokens from which the modelled finalize falls under 10% of the
modelled sweep (the sweep grows with the tokens, finalize does not).
Modules that share an input (q/k/v, gate/up) are grouped by name when the model cannot be run
(meta tensors): same block and parent, same d_in, and not an output projection.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

# name -> (fp32 GEMM FLOP/s as used by the accumulation (TF32 on tensor cores where torch allows it),
#          bf16 GEMM FLOP/s of the model's passes, fp64 GEMM FLOP/s, fp64 eigen/Cholesky efficiency)
# Peak dense rates from the vendors' data sheets; the efficiencies are assumptions until measured.
DEVICES = {
    "h200": {"fp32_gemm": 0.6 * 494e12, "bf16_gemm": 0.6 * 989e12, "fp64_gemm": 0.6 * 67e12, "fp64_eigen": 0.1 * 67e12,
             "fp64_peak": 67e12, "memory": 141e9,
             "label": "NVIDIA H200 SXM (dense peaks 494 TF32 / 989 BF16 / 67 FP64 TFLOP/s; 60% GEMM, 10% eigen)"},
    # On the CPU the "peak" is the measured fp64 GEMM rate: the floor it gives is a practical one.
    "cpu": {"fp32_gemm": 40e9, "bf16_gemm": 40e9, "fp64_gemm": 20e9, "fp64_eigen": 8e9, "fp64_peak": 20e9,
            "memory": 24 * 2 ** 30,
            "label": "one core of the 2-core AMD EPYC VM (measured: ~40 GF/s fp32 GEMM, ~20 fp64, eigen ~8)"},
}
OUTPUT_PROJECTIONS = ("o_proj", "out_proj", "down_proj", "c_proj", "dense", "fc2", "wo", "w2")


@dataclass
class ProfileCost:
    model: str
    tokens: int
    modules: int
    distinct_inputs: int
    plain_flops: float
    sweep_extra_flops: float
    finalize_flops: dict
    device: str
    plain_seconds: float
    sweep_seconds: float
    finalize_seconds: float
    statistics_bytes: int
    tap_input_bytes_per_batch: int
    sweeps: int = 1
    coupling_flops: float = 0.0
    coupling_seconds: float = 0.0
    finalize_bytes: int = 0  # float64 working set: the largest input's Σ and L, one module's C and halves
    finalize_floor_seconds: float = 0.0  # finalize's FLOPs at the device's full FP64 peak
    coupling_note: str = ""  # why the coupling row is empty

    @property
    def tokens_for_finalize_share(self) -> float:
        """Calibration tokens from which the modelled finalize is ≤ 10% of the modelled sweep (the sweep's
        seconds are linear in the tokens at a fixed number of sweeps; finalize's do not depend on them)."""
        return self.tokens * self.finalize_seconds / (0.10 * self.sweep_seconds) if self.sweep_seconds else float("nan")

    @property
    def finalize_share_of_sweep(self) -> float:
        return self.finalize_seconds / self.sweep_seconds if self.sweep_seconds else float("nan")

    @property
    def finalize_floor_share_of_sweep(self) -> float:
        return self.finalize_floor_seconds / self.sweep_seconds if self.sweep_seconds else float("nan")

    def to_dict(self) -> dict:
        return {**asdict(self), "finalize_share_of_sweep": self.finalize_share_of_sweep,
                "finalize_floor_share_of_sweep": self.finalize_floor_share_of_sweep,
                "tokens_for_finalize_share": self.tokens_for_finalize_share}

    def table(self) -> str:
        from ..utils.memory import human_bytes

        fin = " + ".join(f"{k} {v / 1e12:.1f}" for k, v in self.finalize_flops.items())
        return "\n".join([
            f"{self.model}: {self.modules} target modules, {self.distinct_inputs} distinct inputs; "
            f"{self.tokens:,} tokens; {self.device}",
            "",
            "| part | TFLOP | modelled seconds | / plain |",
            "|---|---:|---:|---:|",
            f"| plain frozen fwd+bwd (bf16) | {self.plain_flops / 1e12:.1f} | {self.plain_seconds:.1f} | 1.00 |",
            f"| sweep = {self.sweeps} × plain + accumulation (fp32) | "
            f"{(self.sweeps * self.plain_flops + self.sweep_extra_flops) / 1e12:.1f} | "
            f"{self.sweep_seconds:.1f} | {self.sweep_seconds / self.plain_seconds:.2f} |",
            f"| finalize (fp64: {fin}) | {sum(self.finalize_flops.values()) / 1e12:.1f} | "
            f"{self.finalize_seconds:.1f} | {self.finalize_seconds / self.plain_seconds:.2f} |",
            (f"| coupling (2 forwards per layer, bf16; corrections, fp64) | {self.coupling_flops / 1e12:.1f} | "
             f"{self.coupling_seconds:.1f} | {self.coupling_seconds / self.plain_seconds:.2f} |"
             if self.coupling_flops else f"| coupling | – | {self.coupling_note} | – |"),
            "",
            f"finalize = {self.finalize_share_of_sweep:.0%} of the sweep; statistics "
            f"{human_bytes(self.statistics_bytes)} (fp32, two halves and a staged batch), tap inputs "
            f"{human_bytes(self.tap_input_bytes_per_batch)} per batch, dense in {self.sweeps} sweep(s) on this "
            f"device; finalize's float64 working set {human_bytes(self.finalize_bytes)} (one input's Σ and "
            "Cholesky factor at a time, one module's C and halves).",
            f"At the full FP64 peak finalize would take {self.finalize_floor_seconds:.1f} s "
            f"({self.finalize_floor_share_of_sweep:.0%} of the sweep): the floor of exact float64 "
            f"columns. Finalize does not grow with the tokens: it is ≤ 10% of the sweep from "
            f"{self.tokens_for_finalize_share:,.0f} tokens on.",
            "A model: attention's T×T work is not counted; rates are peaks × assumed efficiencies "
            "(layerprof.pipeline.profile_cost.DEVICES).",
        ])


def _group_inputs(targets) -> dict[str, str]:
    """target name -> a key for the input it reads (shared by q/k/v, by gate/up; by name only)."""
    keys = {}
    for name, t in targets.items():
        parent, _, leaf = name.rpartition(".")
        output = any(leaf == p or leaf.endswith(p) for p in OUTPUT_PROJECTIONS)
        keys[name] = name if output else f"{t.layer}|{parent}|{t.d_in}"
    return keys


def model_cost(model, tokens: int, device: str = "h200", *, batch_tokens: int = 4096, name: str = "",
               coupling_tokens: int | None = 2048, coupling: bool = False, rank: int = 8,
               rank_cross: bool = True) -> ProfileCost:
    """The cost model for a model (real or on the meta device) and ``tokens`` calibration tokens;
    ``coupling=True`` adds the coupling pass (off by default, as in ``profile``); ``rank_cross`` the
    halves' rank-r subspaces (on by default: the default score is made from them)."""
    from .memory_plan import plan_memory
    from ..model.targets import find_targets, linear_kind, modules_by_name, output_head_names

    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    rates = DEVICES[device]
    targets = find_targets(model, None)
    keys = _group_inputs(targets)
    inputs = {}
    for n, t in targets.items():
        inputs.setdefault(keys[n], t.d_in)
    heads = modules_by_name(model, output_head_names(model))
    head_flops = sum(2.0 * a * b for a, b in (linear_kind(m).dims(m) for m in heads.values()))
    linear = sum(2.0 * t.d_in * t.d_out for t in targets.values()) + head_flops
    plain = tokens * 2 * linear  # forward + input-gradient backward
    accumulate = tokens * (sum(d * d for d in inputs.values())
                           + sum(2.0 * t.d_in * t.d_out + 3.0 * t.d_out for t in targets.values()))
    flops, fp64_eigen, fp64_gemm = _finalize_flops(targets, inputs, rank, rank_cross)
    cholesky, solves = flops["Cholesky"], flops["solves"]
    fin_s = fp64_eigen / rates["fp64_eigen"] + fp64_gemm / rates["fp64_gemm"]
    # float64: Σ and L of one input (2·d²) and one module's C, whitened C and the halves' (4·d_in·d_out).
    fin_bytes = 8 * (2 * max(inputs.values(), default=0) ** 2
                     + 4 * max((t.d_in * t.d_out for t in targets.values()), default=0))
    plain_s = plain / rates["bf16_gemm"]
    import torch

    # Dense statistics in as many sweeps as the device's memory needs (the model's weights, bf16, stay).
    weights = sum(p.numel() for p in model.parameters()) * 2
    budget = int(0.8 * rates["memory"]) - weights
    try:
        mem = plan_memory(targets, acc_bytes=4, input_bytes=2, rows_per_batch=batch_tokens,
                          device=torch.device("cpu"), sketch=None, max_memory=max(budget, 1), shared=keys)
    except MemoryError:
        mem = plan_memory(targets, acc_bytes=4, input_bytes=2, rows_per_batch=batch_tokens,
                          device=torch.device("cpu"), sketch=None, max_memory=1 << 62, shared=keys)
    # Coupling: forwards only (half of plain's per-token work), two per layer; corrections in fp64.
    dense_one_sweep = mem.sketch is None and mem.sweeps == 1
    layers = len({t.layer for t in targets.values() if t.layer is not None})
    c_tokens = min(tokens, coupling_tokens) if coupling_tokens is not None else tokens
    couple_fwd = 2 * layers * c_tokens * linear
    couple_solve = cholesky + solves / 2  # one solve with C per module (finalize does two: the halves)
    run_coupling = coupling and dense_one_sweep
    coupling_flops = couple_fwd + couple_solve if run_coupling else 0.0
    coupling_s = (couple_fwd / rates["bf16_gemm"] + cholesky / rates["fp64_eigen"]
                  + (solves / 2) / rates["fp64_gemm"]) if run_coupling else 0.0
    return ProfileCost(model=name or type(model).__name__, tokens=tokens, modules=len(targets),
                       distinct_inputs=len(inputs), plain_flops=plain, sweep_extra_flops=accumulate,
                       finalize_flops=flops, device=rates["label"], plain_seconds=plain_s,
                       sweep_seconds=mem.sweeps * plain_s + accumulate / rates["fp32_gemm"], finalize_seconds=fin_s,
                       statistics_bytes=mem.dense_bytes, tap_input_bytes_per_batch=mem.activation_bytes,
                       sweeps=mem.sweeps, coupling_flops=coupling_flops, coupling_seconds=coupling_s,
                       finalize_bytes=fin_bytes, finalize_floor_seconds=sum(flops.values()) / rates["fp64_peak"],
                       coupling_note="not asked (coupling=True adds it)" if not coupling
                       else "skipped: the statistics are not dense in one sweep")


def _finalize_flops(targets: dict, inputs: dict, rank: int, rank_cross: bool) -> tuple[dict, float, float]:
    """Finalize's float64 FLOPs by kind, and their split into eigensolver-bound and GEMM-bound work."""
    from ..stats.spectra import EXACT_SPECTRUM_MAX

    eigen = sum(4.0 / 3.0 * d ** 3 for d in inputs.values())
    cholesky = sum(d ** 3 / 3.0 for d in inputs.values())
    solves = sum(2.0 * t.d_in ** 2 * t.d_out for t in targets.values())
    spectrum = 0.0
    for t in targets.values():
        small, large = sorted((t.d_in, t.d_out))
        spectrum += (2.0 * small * small * large + 4.0 / 3.0 * small ** 3) if small <= EXACT_SPECTRUM_MAX \
            else 4 * 2 * 2.0 * small * large * 128 + 2.0 * large * small * 512
    nfn = sum(2.0 * t.d_out * t.d_in for t in targets.values())  # ‖W‖²: tr(W Σ Wᵀ) came with the sweep
    cross_gemm = cross_eigen = 0.0  # two halves per module
    for t in targets.values() if rank_cross else ():
        small, large = sorted((t.d_in, t.d_out))
        if small <= EXACT_SPECTRUM_MAX:
            cross_gemm += 2 * (2.0 * small * small * large + 2.0 * 2 * rank * small * large)
            cross_eigen += 2 * 4.0 * small ** 3
        else:  # _krylov_ritz: 4 blocks of 2r, two products each; B = AᵀQ; the residual; the projections
            cross_gemm += 2 * (4 * 2 * 2.0 * small * large * 2 * rank + 2.0 * small * large * 8 * rank
                               + 2 * 2.0 * small * large * rank + 2.0 * 2 * rank * small * large)
    flops = {"eigvalsh": eigen, "Cholesky": cholesky, "solves": solves, "spectrum": spectrum, "nfn": nfn}
    if rank_cross:
        flops["rank-r cross"] = cross_gemm + cross_eigen
    return flops, eigen + cholesky + cross_eigen, solves + spectrum + nfn + cross_gemm


def plan_from_dir(path: str, tokens: int, device: str = "h200", coupling: bool = False) -> ProfileCost:
    """``model_cost`` of a local model directory, built from its config on the meta device (no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return model_cost(model, tokens, device, name=f"{type(model).__name__} ({path})", coupling=coupling)
