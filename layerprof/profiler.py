"""The orchestrator: ``Profiler`` (drop-in for a training loop) and ``profile`` (one call).

capture (taps) → accumulate (ops) → finalize → LayerCard. A batch begins at each
forward of the root model (its ``attention_mask`` gives the row mask) and is committed
when the next one begins or when the card is taken; a batch whose statistics are
non-finite is dropped whole and counted.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import resource
import sys
import time
import warnings
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from . import ops
from .accumulate import Accumulator
from .capture import InputKeys, RowMask, Tap
from .errors import BatchError, LayerprofError, ProfileError
from .targets import Target, find_targets, linear_kind, modules_by_name, output_head_names

MAX_DAMPING = 1e3  # relative damping δ beyond this is no longer a regularizer (1e308 overflowed to NaN)
KAPPA_BATCHES = 1  # batches the simulation's curvature κ is measured on (2 forwards per layer each)
# The layer score placement maximizes by default (layerprof.finalize.SCORES), chosen by the
# placement study's pre-registered round-2 rule (docs/RESULTS.md): DEFAULT_SCORE when the card
# knows the fine-tune's budget, DEFAULT_SWEEP_SCORE (the best score the sweep alone gives) when
# it does not.
DEFAULT_SCORE = "sim_gain"
DEFAULT_SWEEP_SCORE = "energy"


def default_score(predict: tuple[str, ...]) -> str:
    """The default score given the predictors that will run (none without a budget)."""
    from .finalize import BUDGET_SCORES

    if DEFAULT_SCORE in BUDGET_SCORES and BUDGET_SCORES[DEFAULT_SCORE] not in predict:
        return DEFAULT_SWEEP_SCORE
    return DEFAULT_SCORE

LossFn = Callable[[Any, Any], torch.Tensor]


def _model_identity(model: nn.Module) -> dict:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        text = config.to_json_string(use_diff=False)
    else:
        text = repr(model)
    return {
        "class": type(model).__name__,
        "config_hash": hashlib.sha256(text.encode()).hexdigest()[:16],
        "parameters": sum(p.numel() for p in model.parameters()),
        "name_or_path": getattr(config, "_name_or_path", None) or None,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", "") if any(True for _ in model.parameters())
        else None,
    }


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    # Process peak RSS (bytes on Linux reported in KiB): an upper bound for the sweep.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


class Profiler:
    """Collect Layer Card statistics from backward passes run inside the ``with`` block.

    Each forward of ``model`` starts a batch; its ``attention_mask`` (if given as a
    keyword) excludes padding rows. Call ``card()`` after the block (or inside it).
    The statistics for module m are N_m, S_m = Σ x xᵀ, C_m = Σ x gᵀ, q_m = Σ ‖g‖²
    with g = ∂L/∂y over every backward pass run while profiling.
    """

    def __init__(self, model: nn.Module, *, targets=None, rank: int = 8, damping: float = 1e-3,
                 backend: str = "auto", dtype: torch.dtype = torch.float32, progress: bool = False,
                 sketch: int | None = None, sketch_seed: int = 0, score: str = DEFAULT_SWEEP_SCORE,
                 _owner: object | None = None):
        from .finalize import BUDGET_SCORES, SCORES

        if score not in SCORES:
            raise ProfileError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
        if score in BUDGET_SCORES:
            raise ProfileError(f"score={score!r} needs the fine-tune's budget and runs after the sweep: use "
                               f"lp.profile(model, batches, budget=..., score={score!r})")
        self.score = score
        if not isinstance(model, nn.Module):
            raise ProfileError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if dtype not in (torch.float32, torch.float64):
            raise ProfileError(f"statistics dtype must be torch.float32 or torch.float64, got {dtype}")
        if isinstance(rank, bool) or not (isinstance(rank, int) and rank >= 1):
            raise ProfileError(f"rank must be a positive int, got {rank!r}")
        if isinstance(damping, bool) or not (isinstance(damping, (int, float)) and 0 <= damping <= MAX_DAMPING):
            raise ProfileError(f"damping is relative to the mean eigenvalue of Σ: a number in [0, {MAX_DAMPING:g}], "
                               f"got {damping!r}")
        from .peft_models import base_layer_targets, is_peft_model

        self.model = model
        # A PeftModel is profiled as its base model (layerprof.peft_models): base layers, adapters off.
        self._peft = is_peft_model(model) and _owner is None  # profile() handles it itself
        self._adapters_off = None
        if self._peft:
            targets = base_layer_targets(targets)
        self.targets: dict[str, Target] = find_targets(model, targets)
        self.target_spec = targets if targets is None or isinstance(targets, str) else list(targets)
        too_small = [f"{t.name} ({t.d_in}×{t.d_out})" for t in self.targets.values() if rank > min(t.d_in, t.d_out)]
        if too_small:
            smallest = min(min(t.d_in, t.d_out) for t in self.targets.values())
            raise ProfileError(
                f"rank={rank} exceeds min(d_in, d_out) of {len(too_small)} target module(s): "
                f"{', '.join(too_small[:5])}{' …' if len(too_small) > 5 else ''}; "
                f"use rank <= {smallest} or exclude those modules with targets=")
        self.rank, self.damping, self.dtype = rank, float(damping), dtype
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.device = device
        self.backend_requested = backend
        self.backend = ops.resolve_backend(backend, device.type)
        if sketch is not None and (isinstance(sketch, bool) or not isinstance(sketch, int) or sketch < 1):
            raise ProfileError(f"sketch must be a positive int (columns of Ω) or None, got {sketch!r}")
        if sketch is not None and sketch < rank:
            raise ProfileError(f"sketch={sketch} is smaller than rank={rank}: ρ(r) needs at least r sketch columns; "
                               f"use sketch >= {rank} (a few times r is better)")
        self.sketch = sketch
        self.acc = Accumulator({n: (t.d_in, t.d_out) for n, t in self.targets.items()}, dtype, self.backend,
                               sketch=sketch, sketch_seed=sketch_seed)
        self.progress = progress
        self._taps: list[Tap] = []
        self._root_handle = None
        self._mask: RowMask | None = None
        self._batch_rows: int | None = None
        self._input_keys = InputKeys()
        self._unmasked: set[str] = set()
        self.skipped: list[dict] = []
        self._data_hash = hashlib.sha256()
        self._batch_index = -1
        self._t0: float | None = None
        self._elapsed = 0.0
        self._active = False
        self._rows_total = 0
        self._owner = _owner if _owner is not None else self  # profile() passes its own claim down
        self._claimed = False
        self._reduced: tuple | None = None  # (rows, data hash, skipped) once the statistics are all-reduced
        self._versions: dict[str, int] = {}  # weight version counters at __enter__ (an optimizer bumps them)

    # ----------------------------------------------------------------- hooks
    def __enter__(self) -> "Profiler":
        if self._active:
            raise ProfileError("this Profiler is already active; one `with prof:` at a time")
        if self._reduced is not None:
            raise ProfileError("card() already combined this Profiler's statistics across ranks; more batches "
                               "would mix local and global sums: start a new Profiler")
        from .claim import claim

        self._claimed = claim(self.model, self._owner)
        if self._peft:
            self._adapters_off = self.model.disable_adapter()
            self._adapters_off.__enter__()
        modules = modules_by_name(self.model, self.targets)
        self._versions = _weight_versions(modules)
        try:
            for name in self.targets:
                self._taps.append(Tap(name, modules[name], self._sink, lambda: self._mask, self._input_keys))
            self._root_handle = self.model.register_forward_pre_hook(self._on_root_forward, with_kwargs=True)
        except BaseException:
            self._remove_hooks()
            self._release()
            raise
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._active = True
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.end_batch()
            else:
                self.acc.discard()
        finally:
            self._remove_hooks()
            if self._t0 is not None:
                self._elapsed += time.perf_counter() - self._t0
                self._t0 = None
            self._active = False
            self._release()

    def _release(self) -> None:
        if self._adapters_off is not None:
            self._adapters_off.__exit__(None, None, None)
            self._adapters_off = None
        if self._claimed:
            from .claim import release

            release(self.model, self._owner)
            self._claimed = False

    def _remove_hooks(self) -> None:
        for tap in self._taps:
            tap.remove()
        self._taps.clear()
        if self._root_handle is not None:
            self._root_handle.remove()
            self._root_handle = None

    def _on_root_forward(self, module, args, kwargs):
        self.end_batch()
        self.begin_batch(kwargs.get("attention_mask"), kwargs.get("input_ids", args[0] if args else None))
        return None

    def begin_batch(self, attention_mask: torch.Tensor | None, ids: Any = None) -> None:
        """Start a batch: its padding mask and the data fingerprint of its inputs."""
        self._batch_index += 1
        self._input_keys.reset()
        mask = None
        if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
            mask = RowMask(attention_mask)
        self._mask = mask
        # Rows of this batch: its non-padding positions (or all positions of input_ids);
        # None when the inputs do not say, and the staged statistics are asked instead.
        self._batch_rows = mask.rows if mask is not None else (
            ids.numel() if isinstance(ids, torch.Tensor) and ids.dim() == 2 else None)
        if isinstance(ids, torch.Tensor):
            self._data_hash.update(ids.detach().cpu().contiguous().numpy().tobytes())
            if mask is not None:
                self._data_hash.update(mask.mask.cpu().numpy().tobytes())

    def _sink(self, name: str, x: torch.Tensor, g: torch.Tensor, mask: RowMask | None, input_id: int | None) -> None:
        d_in, d_out = self.acc.dims[name]
        x2 = x.reshape(-1, d_in)
        g2 = g.reshape(-1, d_out)
        row_mask = mask.for_rows(x.shape[:-1]) if mask is not None else None
        if mask is not None and row_mask is None:
            # Rows of this call cannot be matched to (batch, position): e.g. a pooler that
            # reads one position per sequence. Every row counts; the card says so.
            self._unmasked.add(name)
        rows = x2.shape[0] if row_mask is None else mask.rows
        self.acc.update(name, x2, g2, row_mask, rows, input_id)

    def end_batch(self) -> bool:
        """Commit the staged batch (drop it whole when non-finite); True if committed."""
        if not self.acc.has_pending:
            return False
        if not self.acc.pending_is_finite():
            self.skip(self._batch_index, "non-finite gradients or inputs")
            self.acc.discard()
            return False
        staged = self.acc.pending_rows()
        rows = self._batch_rows if self._batch_rows is not None else staged
        if staged == 0:
            self.skip(self._batch_index, "padding-only batch (attention_mask is all zero)")
            self.acc.discard()
            return False
        self.acc.commit()
        self._rows_total += rows
        return True

    def skip(self, index: int, reason: str) -> None:
        self.skipped.append({"batch": index, "reason": reason})

    @property
    def rows(self) -> int:
        """Rows (non-padding token positions) of the committed batches."""
        return self._rows_total

    # ------------------------------------------------------------------ card
    def coupling(self, batches: list[dict]) -> dict | None:
        """Layer coupling on ``batches`` (see ``layerprof.coupling``); the model is left bitwise as it was."""
        from .coupling import corrections, coupling_matrix, output_directions

        if self.sketch is not None:
            raise ProfileError("coupling needs the dense C (the optimal corrections); profile without sketch=")
        fired = [n for n in self.targets if self.acc.total(n) is not None and self.targets[n].layer is not None]
        if not fired or not batches:
            return None
        deltas = corrections({n: self.acc.total(n) for n in fired}, self.damping)
        layer_modules: dict[int, list[str]] = {}
        for n in fired:
            layer_modules.setdefault(self.targets[n].layer, []).append(n)
        t0 = time.perf_counter()
        dirs = output_directions(self.model, [_as_kwargs(b, self.device) for b in batches], layer_modules, deltas,
                                 lambda m: linear_kind(m).weight(m))
        layers, K, rho = coupling_matrix(dirs)
        # The differences moved and restored the weights (bitwise): not an optimizer step.
        self._versions = _weight_versions(modules_by_name(self.model, self._versions))
        return {"layers": layers, "rho": rho.tolist(), "K": K.tolist(), "batches": len(batches),
                "outputs": int(next(iter(dirs.values())).numel()), "seconds": time.perf_counter() - t0,
                "method": "central finite difference of logits, ε = 1e-3 of the weight scale"}

    def simulate(self, batches: list, budget, loss_fn: "LossFn | None" = None) -> dict:
        """Candidate A (``layerprof.simulate``): each module's simulated LoRA gain for ``budget``.

        κ per layer comes from two extra forwards per layer over ``batches`` (more where the first
        estimate is not positive; weights restored bitwise). Returns ``{"module_gain": {name: gain},
        "kappa": {layer: κ}, "kappa_median_layers": [...], "forwards": ..., "seconds": ...}``.
        """
        from .coupling import corrections
        from .simulate import curvature, simulated_gains

        if self.sketch is not None:
            raise ProfileError("the simulated-LoRA score needs the dense C; profile with sketch=None "
                               "or leave budget= out")
        fired = [n for n in self.targets if self.targets[n].layer is not None
                 and self.acc.half(0, n) is not None and self.acc.half(1, n) is not None]
        if not fired or not batches:
            return {"module_gain": {}, "kappa": {}, "kappa_median_layers": [], "forwards": 0.0, "seconds": 0.0}
        t0 = time.perf_counter()
        nb = self.acc.batches_per_half()
        totals = {n: self.acc.total(n) for n in fired}
        # The correction direction of the mean batch loss: −Gᵀ(Σ+λI)⁻¹ with G = C / batches.
        directions = {n: d / self.acc.batches for n, d in corrections(totals, self.damping).items()}
        sigmas = {n: ops.symmetric(st.S.double().cpu()) / st.N for n, st in totals.items()}
        layer_modules: dict[int, list[str]] = {}
        for n in fired:
            layer_modules.setdefault(self.targets[n].layer, []).append(n)
        loss_fn = loss_fn or _default_loss
        kw = [_as_kwargs(b, self.device) for b in batches]

        def mean_loss(model, _batches) -> float:
            with torch.no_grad():
                return sum(float(loss_fn(model(**k), b)) for k, b in zip(kw, batches)) / len(kw)

        measured = curvature(self.model, batches, layer_modules, directions, sigmas, mean_loss,
                             lambda m: linear_kind(m).weight(m))
        from .reduce import all_reduce_mean

        # Each rank measured κ on its own batch: the mean over ranks, so that every rank's card agrees.
        kappa = {int(k): v for k, v in all_reduce_mean({str(k): v for k, v in measured.kappa.items()}).items()}
        flagged = all_reduce_mean({str(l): float(l in measured.median_layers) for l in layer_modules})
        fallback = sorted(int(l) for l, f in flagged.items() if f > 0)
        gains = simulated_gains({n: (self.acc.half(0, n), self.acc.half(1, n)) for n in fired}, nb,
                                {n: kappa[self.targets[n].layer] for n in fired}, budget,
                                calib_rows_per_batch=self.rows / max(self.acc.batches, 1))
        forwards = all_reduce_mean({"n": float(measured.evaluations)})["n"]
        return {"module_gain": gains, "kappa": kappa, "kappa_median_layers": fallback,
                "forwards": forwards * len(batches), "seconds": time.perf_counter() - t0}

    def card(self, *, sweep_seconds: float | None = None, coupling: dict | None = None):
        """Finalize the statistics into a ``LayerCard`` (see ``layerprof.finalize``)."""
        from .card import LayerCard
        from .finalize import finalize

        from .reduce import all_reduce_meta, all_reduce_stats, world

        if self._active:
            self.end_batch()
        elapsed = self._elapsed + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)
        # Under torch.distributed every rank holds its shard's sums: add them up first, so
        # that every rank finalizes the same global card. Once only: the sums are then global,
        # and a second card() must not add them up again.
        if self._reduced is not None:
            rows, data_hash, skipped = self._reduced
        elif world()[1] > 1:
            all_reduce_stats(self.acc, list(self.targets))
            self._reduced = rows, data_hash, skipped = all_reduce_meta(self.rows, self._data_hash.hexdigest()[:16],
                                                                       self.skipped)
        else:  # one process: nothing to combine, and the Profiler may go on sweeping after this card
            rows, data_hash, skipped = self.rows, self._data_hash.hexdigest()[:16], list(self.skipped)
        fired = {n for n in self.targets if self.acc.total(n) is not None}
        if not fired:
            reasons = "; ".join(f"batch {s['batch']}: {s['reason']}" for s in skipped[:5])
            raise ProfileError(
                "no statistics were collected: " + (f"every batch was skipped ({reasons})" if skipped else
                "no backward pass reached a target module; run loss.backward() inside the "
                "Profiler block (not under torch.no_grad()), or check targets="))
        unfired = sorted(set(self.targets) - fired)
        if unfired:
            warnings.warn(f"{len(unfired)} target module(s) never received a gradient and are not on the card: "
                          f"{', '.join(unfired[:8])}{' …' if len(unfired) > 8 else ''}", stacklevel=2)
        modules = modules_by_name(self.model, fired)
        weights = {n: linear_kind(m).weight(modules[n]) for n, m in modules.items()}
        heads = []
        for name, module in modules_by_name(self.model, output_head_names(self.model)).items():
            d_in, d_out = linear_kind(module).dims(module)
            heads.append({"name": name, "d_in": d_in, "d_out": d_out})
        t_fin = time.perf_counter()
        modules_rows, layer_rows, stability = finalize(
            self.acc, {n: self.targets[n] for n in sorted(fired, key=list(self.targets).index)},
            weights, rank=self.rank, damping=self.damping,
            head_flops_per_row=sum(2.0 * h["d_in"] * h["d_out"] for h in heads), score=self.score)
        finalize_s = time.perf_counter() - t_fin
        sweep = sweep_seconds if sweep_seconds is not None else elapsed
        from ._version import __version__

        versions = {"layerprof": __version__, "torch": torch.__version__,
                    "python": sys.version.split()[0]}
        for pkg in ("transformers", "peft"):
            mod = sys.modules.get(pkg)
            if mod is not None:
                versions[pkg] = getattr(mod, "__version__", None)
        meta = {
            "model": _model_identity(self.model),
            "data": {"rows": rows, "batches": self.acc.batches, "hash": data_hash, "world_size": world()[1]},
            "settings": {"rank": self.rank, "damping": self.damping, "backend": self.backend,
                         "backend_requested": self.backend_requested,
                         "dtype": str(self.dtype).replace("torch.", ""),
                         "targets": self.target_spec, "score": self.score, "sketch": self.sketch,
                         "sketched_modules": sum(self.acc.sketched(n) for n in fired)},
            "versions": versions,
            "sweep": {"seconds": sweep, "finalize_seconds": finalize_s,
                      "rows_per_second": rows / sweep if sweep > 0 else None,
                      "peak_memory_bytes": _peak_memory(self.device),
                      "statistics_bytes": self.acc.statistics_bytes(),
                      "gram_updates": self.acc.gram_updates,
                      "peak_memory_kind": "cuda max_memory_allocated" if self.device.type == "cuda"
                      else "process peak RSS", "device": str(self.device)},
            "skipped": skipped,
            "stability": stability,
            "unfired": unfired,
            "unmasked": sorted(self._unmasked),
            "heads": heads,
            "calls": {n: self.acc.calls.get(n, 0) for n in fired},
        }
        if coupling is not None:
            meta["coupling"] = coupling
        now = _weight_versions({n: m for n, m in modules.items() if n in self._versions})
        changed = sorted(n for n, v in now.items() if v != self._versions[n])
        if changed:
            # An optimizer stepping during the sweep: the statistics mix several weights.
            warnings.warn(f"the weights of {len(changed)} target module(s) changed while they were profiled "
                          f"({', '.join(changed[:3])}{' …' if len(changed) > 3 else ''}); the card mixes statistics "
                          "of different weights: profile before training starts, or with the optimizer paused",
                          stacklevel=2)
            meta["weights_changed"] = changed
        card = LayerCard(modules=modules_rows, layers=layer_rows, meta=meta)
        if self._peft:
            from .peft_models import strip_base_layer

            card = strip_base_layer(card)
        return card


def _weight_versions(modules: Mapping[str, nn.Module]) -> dict[str, int]:
    """Each module's weight version counter (in-place updates, e.g. an optimizer step, bump it)."""
    weights = {n: linear_kind(m).weight(m) for n, m in modules.items()}
    return {n: w._version for n, w in weights.items() if w is not None}


# --------------------------------------------------------------------- profile
@contextlib.contextmanager
def frozen_eval(model: nn.Module):
    """Freeze every parameter and switch to eval mode; restore both exactly on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        model.eval()
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


def _as_kwargs(batch: Any, device: torch.device) -> dict:
    if isinstance(batch, torch.Tensor):
        batch = {"input_ids": batch}
    if not isinstance(batch, Mapping):
        raise ProfileError(f"a batch must be a dict of model keyword arguments or a tensor of input_ids, "
                           f"got {type(batch).__name__}")
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _default_loss(outputs: Any, batch: Any) -> torch.Tensor:
    loss = getattr(outputs, "loss", None)
    if loss is None and isinstance(outputs, Mapping):
        loss = outputs.get("loss")
    if loss is None:
        raise ProfileError("the model returned no loss: include labels in each batch (e.g. labels=input_ids "
                           "for a causal LM) or pass loss_fn=lambda outputs, batch: ...")
    return loss


def _check_loss(loss: Any) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor):
        raise ProfileError(f"the loss must be a torch.Tensor, got {type(loss).__name__}; return a scalar tensor "
                           "from loss_fn")
    if loss.numel() != 1:
        raise ProfileError(f"the loss must be a scalar (the mean over the batch, as training computes it), got "
                           f"shape {tuple(loss.shape)}; reduce it, e.g. loss.mean()")
    if not loss.requires_grad:
        raise ProfileError("the loss does not require grad: compute it from the model outputs inside loss_fn, "
                           "not under torch.no_grad() or from detached tensors")
    return loss.reshape(())


def profile(model: nn.Module, batches: Iterable, loss_fn: LossFn | None = None, *, targets=None, rank: int = 8,
            score: str | None = None,
            damping: float = 1e-3, backend: str = "auto", max_tokens: int | None = None, progress: bool = True,
            dtype: torch.dtype = torch.float32, coupling: bool = False, coupling_batches: int = 2,
            sketch: int | str | None = "auto", sketch_seed: int = 0, max_memory: int | None = None,
            budget=None, predict: tuple[str, ...] | None = None):
    """Profile ``model`` over ``batches`` in one forward/backward sweep and return a ``LayerCard``.

    Each batch is a dict of model keyword arguments (or a tensor of input_ids); the loss
    is ``loss_fn(outputs, batch)`` or ``outputs.loss`` — the mean over the batch, exactly
    as training computes it. During the sweep the model is in eval mode with every
    parameter frozen (only input gradients flow; no ``.grad`` is written); both are
    restored afterwards, and the parameters are bitwise unchanged.
    A batch with a non-finite loss or gradients is skipped and counted on the card.
    ``sketch=k`` keeps CΩ (d_in × k, a fixed Gaussian Ω) instead of C: memory O(d_in·k) per
    module, unbiased ρ² and ‖C‖², randomized-SVD ρ(r). The default ``sketch="auto"`` keeps
    dense statistics unless they would not fit ``max_memory`` (default: 80% of the free
    memory of the model's device; ``layerprof.planner``); ``sketch=None`` forces dense. When
    even that does not fit, the targets are profiled in several sweeps over the same batches,
    one group of whole layers each (``batches`` must then be re-iterable, e.g. a list), and
    merged into one card. ``coupling=True`` also measures the layer coupling matrix on the
    first ``coupling_batches`` batches (two extra forwards per layer; ``layerprof.coupling``).
    ``score`` names the per-layer score placement maximizes (``layerprof.finalize.SCORES``;
    default: the placement study's choice, ``DEFAULT_SCORE`` with a budget, ``DEFAULT_SWEEP_SCORE``
    without): ``"resnorm2"`` (ρ²), ``"resnorm2_rank"``, ``"resnorm2_over_noise"``,
    ``"resnorm2_rank_over_noise"``, ``"energy"``, the cross-half ``"resnorm2_x"``, ``"grad_norm2_x"``,
    and the budget-aware ``"sim_gain"``, ``"lca_gain"`` (docs/RESULTS.md compares them).
    ``budget`` (a ``TrainingBudget`` or a dict of its fields: steps, lr, r, lora_alpha, ...) is the
    fine-tune the placement is for; with it the card gets the predicted-gain columns named in
    ``predict`` (default both): ``"simulate"`` (simulated LoRA on each module's local model,
    ``layerprof.simulate``; two extra forwards per layer) and ``"warmup"`` (a short full-LoRA
    warm-up with loss-change allocation, ``layerprof.warmup``; ⌈warmup_fraction·steps⌉ + 1
    forward/backward passes over the first batches). The card records the budget.
    """
    from .claim import claimed

    if not isinstance(model, nn.Module):
        raise ProfileError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    from .peft_models import base_layer_targets, is_peft_model, strip_base_layer

    owner = object()
    peft = is_peft_model(model)
    # Claimed before anything touches the model: a second sweep on it is refused, model untouched.
    with claimed(model, owner), (model.disable_adapter() if peft else contextlib.nullcontext()):
        card = _profile(model, batches, loss_fn, targets=base_layer_targets(targets) if peft else targets, rank=rank,
                        score=score, damping=damping, backend=backend, max_tokens=max_tokens, progress=progress,
                        dtype=dtype, coupling=coupling, coupling_batches=coupling_batches, sketch=sketch,
                        sketch_seed=sketch_seed, max_memory=max_memory, budget=budget, predict=predict,
                        _owner=owner)
    return strip_base_layer(card) if peft else card


def _profile(model: nn.Module, batches: Iterable, loss_fn: LossFn | None = None, *, targets=None, rank: int = 8,
            score: str | None = None,
            damping: float = 1e-3, backend: str = "auto", max_tokens: int | None = None, progress: bool = True,
            dtype: torch.dtype = torch.float32, coupling: bool = False, coupling_batches: int = 2,
            sketch: int | str | None = "auto", sketch_seed: int = 0, max_memory: int | None = None,
            budget=None, predict: tuple[str, ...] | None = None, _owner: object = None):
    """The body of ``profile`` (the model is claimed by ``_owner``)."""
    from .budget import as_budget
    from .finalize import BUDGET_SCORES

    try:
        budget = as_budget(budget)
    except ValueError as e:
        raise ProfileError(str(e)) from None
    predict = _predictors(predict, budget)
    score = score or default_score(predict)
    if score in BUDGET_SCORES and BUDGET_SCORES[score] not in predict:
        raise ProfileError(f"score={score!r} is a budget-aware prediction: pass budget=TrainingBudget(steps=..., "
                           f"lr=..., r=..., lora_alpha=...) (and keep {score!r}'s predictor in predict=)")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0):
        raise ProfileError(f"max_tokens must be a positive int or None, got {max_tokens!r}")
    iterator = iter(batches) if batches is not None else iter(())
    first = next(iterator, None)
    if first is None:
        raise ProfileError("no batches: pass a non-empty iterable of batches (dicts of model inputs, "
                           "e.g. {'input_ids': ..., 'attention_mask': ..., 'labels': ...})")
    loss_fn = loss_fn or _default_loss
    total = None
    if hasattr(batches, "__len__"):
        total = len(batches)  # type: ignore[arg-type]
    if isinstance(coupling_batches, bool) or not isinstance(coupling_batches, int) or coupling_batches < 1:
        raise ProfileError(f"coupling_batches must be a positive int, got {coupling_batches!r}")
    if sketch != "auto" and sketch is not None and (isinstance(sketch, bool) or not isinstance(sketch, int)
                                                    or sketch < 1):
        raise ProfileError(f"sketch must be 'auto', None or a positive int, got {sketch!r}")
    from .planner import plan_memory, shared_inputs

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    first_kw = _as_kwargs(first, device)
    ids = first_kw.get("input_ids")
    rows_per_batch = ids.numel() if isinstance(ids, torch.Tensor) else 4096
    in_bytes = next((p.element_size() for p in model.parameters()), 4)
    found = find_targets(model, targets)
    plan_kw = dict(acc_bytes=torch.tensor([], dtype=dtype).element_size(), input_bytes=in_bytes,
                   rows_per_batch=rows_per_batch, device=device,
                   sketch=None if coupling and sketch == "auto" else sketch, max_memory=max_memory)

    def refined():
        # The first estimate counts every module alone; refine it with the input sharing seen in
        # one no-grad eval-mode forward (q/k/v, gate/up hold one S) before settling for less.
        with frozen_eval(model):
            return plan_memory(found, shared=shared_inputs(model, found, first_kw), **plan_kw)

    try:
        try:
            plan = plan_memory(found, **plan_kw)
        except MemoryError:
            plan = refined()
        else:
            if plan.groups or (plan.mode == "sketch" and plan_kw["sketch"] == "auto"):
                plan = refined()
    except MemoryError as e:
        raise ProfileError(str(e)) from None
    if progress and (plan.mode == "sketch" or plan.groups):
        print(plan.describe(), file=sys.stderr)  # the user should know before a long sweep starts
    if coupling and plan.sketch is not None:
        raise ProfileError("coupling needs the dense C (the optimal corrections); use sketch=None with coupling=True")
    if plan.groups and coupling:
        raise ProfileError(f"coupling needs every layer's statistics in one sweep, but they fit only in "
                           f"{plan.sweeps} sweeps ({plan.describe()}); raise max_memory or profile without coupling")
    if plan.groups:
        if iter(batches) is batches:
            raise ProfileError(f"the statistics fit only in {plan.sweeps} sweeps over the same batches, but batches "
                               "is a one-shot iterator; pass a list (or any re-iterable) of batches, or raise "
                               "max_memory")
        groups = plan.groups
    else:
        groups = [None]
    bar = None  # created after the plan is printed, so the two never share a line
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_tokens, unit="rows", unit_scale=True, desc="layerprof sweep", dynamic_ncols=True,
                   leave=False, postfix={"batches": f"0/{total or '?'}"})
        bar.lp_estimate = max_tokens is None  # else the total is max_tokens itself
    if "simulate" in predict and plan.sketch is not None:
        raise ProfileError("the simulated-LoRA score needs dense statistics, but they fit only sketched "
                           f"({plan.describe()}); raise max_memory or pass predict=('warmup',)")
    # Batches kept for what runs after the sweep: coupling, the curvature κ, the warm-up.
    keep = max(coupling_batches if coupling else 0, KAPPA_BATCHES if "simulate" in predict else 0,
               budget.warmup_steps + 1 if "warmup" in predict else 0)
    base_score = "resnorm2" if score in BUDGET_SCORES else score  # re-scored once the predictions exist
    kw = dict(rank=rank, damping=damping, backend=backend, dtype=dtype, sketch=plan.sketch, sketch_seed=sketch_seed,
              score=base_score)
    parts = []
    sim = {"module_gain": {}, "kappa": {}, "kappa_median_layers": [], "forwards": 0.0, "seconds": 0.0}
    kept: list = []
    try:
        for gi, group in enumerate(groups):
            if bar is not None and gi:
                bar.reset(total=bar.total)
                bar.set_description(f"layerprof sweep {gi + 1}/{len(groups)}")
            prof = Profiler(model, targets=group if group is not None else targets, _owner=_owner, **kw)
            prof.target_spec = targets if isinstance(targets, (str, type(None))) else list(targets)
            source = itertools.chain([first], iterator) if gi == 0 else iter(batches)
            t0 = time.perf_counter()
            coupling_record = None
            with frozen_eval(model):
                with prof:
                    for index, batch in enumerate(source):
                        if gi == 0 and len(kept) < keep:
                            kept.append(batch)
                        _sweep_one(prof, model, batch, index, loss_fn, bar, total)
                        if max_tokens is not None and prof.rows >= max_tokens:
                            break
                sweep_seconds = time.perf_counter() - t0
                if coupling:
                    coupling_record = prof.coupling(kept[:coupling_batches])
                parts.append(prof.card(sweep_seconds=sweep_seconds, coupling=coupling_record))
                if "simulate" in predict:
                    # After card(): under torch.distributed the statistics are then the global sums.
                    part = prof.simulate(kept[:KAPPA_BATCHES], budget, loss_fn)
                    sim["module_gain"].update(part["module_gain"])
                    sim["kappa"].update(part["kappa"])
                    sim["kappa_median_layers"] += part["kappa_median_layers"]
                    sim["forwards"] += part["forwards"]
                    sim["seconds"] += part["seconds"]
            del prof  # free this group's statistics before the next sweep
    finally:
        if bar is not None:
            bar.close()
    card = parts[0] if len(parts) == 1 else merge_group_cards(parts)
    card.meta["memory_plan"] = plan.to_dict()
    if budget is not None:
        card = _with_predictions(card, model, kept, loss_fn, budget, predict, sim, score)
    return card


def _predictors(predict, budget) -> tuple[str, ...]:
    known = ("simulate", "warmup")
    if budget is None:
        if predict:
            raise ProfileError(f"predict={predict!r} needs budget= (the fine-tune to predict: steps, lr, r, ...)")
        return ()
    if predict is None:
        return known
    if isinstance(predict, str):
        predict = (predict,)
    bad = [p for p in predict if p not in known]
    if bad:
        raise ProfileError(f"predict must name some of {known}, got {bad}")
    return tuple(predict)


def _with_predictions(card, model, kept: list, loss_fn, budget, predict, sim: dict, score: str):
    """The card with its budget-aware columns (sim_gain, lca_gain, κ) filled and re-scored."""
    from .finalize import attach_predictions
    from .targets import modules_by_name
    from .warmup import warmup_lca

    module_cols: dict[str, dict[str, float]] = {}
    meta: dict = {"budget": budget.to_dict()}
    if "simulate" in predict:
        module_cols["sim_gain"] = sim["module_gain"]
        nk = min(len(kept), KAPPA_BATCHES)
        meta["simulate"] = {"seconds": sim["seconds"], "kappa_batches": nk, "extra_forwards": int(sim["forwards"]),
                            "kappa_median_layers": sorted(sim["kappa_median_layers"])}
    if "warmup" in predict:
        if len(kept) < 2:
            raise ProfileError("the warm-up score needs at least 2 batches (train on one, measure on the next)")
        names = [m.name for m in card.modules if m.layer is not None]
        mods = modules_by_name(model, names)
        dims = {m.name: (m.d_in, m.d_out) for m in card.modules}
        device = next((p.device for p in model.parameters()), torch.device("cpu"))

        def loss_of(m, batch):
            return _check_loss(loss_fn(m(**_as_kwargs(batch, device)), batch))

        t0 = time.perf_counter()
        with frozen_eval(model):
            lca = warmup_lca(model, kept, mods, dims, budget, loss_of)
        from .reduce import all_reduce_mean

        module_cols["lca_gain"] = all_reduce_mean(lca.pop("gains"))  # every rank warms up on its own batches
        meta["warmup"] = {**lca, "seconds": time.perf_counter() - t0,
                          "cost_of_full_lora_finetune": lca["passes"] / budget.steps}
    return attach_predictions(card, module_cols, {"kappa": sim["kappa"]} if "simulate" in predict else {},
                              score, meta)


def merge_group_cards(parts: list):
    """One card from sweeps over the same batches with disjoint groups of whole layers.

    Module rows and each layer's own columns come from the sweep that profiled the layer;
    what depends on every layer is recomputed: gain share, rank, the cost of each layer
    (backward depth runs over all layers), split-half stability. Sweep time is the sum.
    """
    from .card import LayerCard
    from .finalize import rank_layers, stability_record
    from .placement import card_cost_model

    modules = [m for p in parts for m in p.modules]
    layers = [dataclasses.asdict(l) for p in parts for l in p.layers]
    if len({l["layer"] for l in layers}) != len(layers):
        raise ProfileError("internal: a layer was profiled in two sweeps")  # groups are whole layers
    meta = parts[0].meta
    for p in parts[1:]:
        if p.meta["data"]["hash"] != meta["data"]["hash"] or p.meta["data"]["rows"] != meta["data"]["rows"]:
            raise ProfileError("the batches changed between sweeps (different data fingerprint): profiling in "
                               "several sweeps needs batches that iterate the same way every time")
    cost_model = card_cost_model(LayerCard(modules, [], meta))  # every layer's modules and the heads
    total = sum(l["resnorm"] ** 2 for l in layers)
    rank = meta["settings"]["rank"]
    for l in layers:
        l["gain_share"] = l["resnorm"] ** 2 / total if total > 0 else float("nan")
        l["cost"] = cost_model.cost([l["layer"]], rank).fraction
    layers.sort(key=lambda l: l["layer"])
    rank_layers(layers)
    have_halves = all(p.meta["stability"]["batches_per_half"][1] > 0 for p in parts)
    sweeps = [p.meta["sweep"] for p in parts]
    merged = {**meta,
              "stability": stability_record(layers, meta["data"]["batches"], have_halves),
              "unfired": sorted({n for p in parts for n in p.meta["unfired"]}),
              "unmasked": sorted({n for p in parts for n in p.meta.get("unmasked", [])}),
              "sweep": {**sweeps[0],
                        "seconds": sum(s["seconds"] for s in sweeps),
                        "finalize_seconds": sum(s["finalize_seconds"] for s in sweeps),
                        "rows_per_second": meta["data"]["rows"] / max(sum(s["seconds"] for s in sweeps), 1e-12),
                        "peak_memory_bytes": max(s["peak_memory_bytes"] or 0 for s in sweeps),
                        "statistics_bytes": max(s.get("statistics_bytes", 0) for s in sweeps),
                        "gram_updates": sum(s.get("gram_updates", 0) for s in sweeps),
                        "sweeps": len(parts)}}
    merged["settings"] = {**meta["settings"],
                          "sketched_modules": sum(p.meta["settings"]["sketched_modules"] for p in parts)}
    return LayerCard(modules, layers, merged)


@contextlib.contextmanager
def _user_code(index: int, what: str, kwargs: Mapping):
    try:
        yield
    except LayerprofError:
        raise
    except Exception as e:  # noqa: BLE001 - anything the user's code raises, chained
        raise BatchError(f"batch {index}: {what} failed on it ({type(e).__name__}: {_first_line(e)}); check that "
                         f"batch's {sorted(kwargs)} against the model") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else "")[:200]


def check_batch(model: nn.Module, kwargs: Mapping, index: int) -> None:
    """Catch the batch mistakes users really make before they reach torch as a raw traceback.

    Token ids must be integers inside the model's vocabulary (when its config declares one);
    attention_mask / token_type_ids must have the ids' shape; labels either the ids' shape
    (token labels, -100 allowed) or one per row.
    """
    ids = kwargs.get("input_ids")
    if not isinstance(ids, torch.Tensor):
        return
    where = f"batch {index}"
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise BatchError(f"{where}: input_ids has dtype {str(ids.dtype).replace('torch.', '')}; token ids must be "
                         "integers (input_ids.long())")
    for key in ("attention_mask", "token_type_ids"):
        other = kwargs.get(key)
        if isinstance(other, torch.Tensor) and tuple(other.shape) != tuple(ids.shape):
            raise BatchError(f"{where}: {key} has shape {tuple(other.shape)} but input_ids {tuple(ids.shape)}; "
                             f"they must match (one {key} entry per token)")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(vocab, int) and ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab:
            raise BatchError(f"{where}: input_ids range over [{lo}, {hi}] but the model's vocabulary has {vocab} "
                             "ids (0..{}); tokenize with the model's own tokenizer".format(vocab - 1))
    labels = kwargs.get("labels")
    if isinstance(labels, torch.Tensor) and ids.dim() >= 1:
        token_labels = labels.dim() == ids.dim()
        if token_labels and tuple(labels.shape) != tuple(ids.shape):
            raise BatchError(f"{where}: labels have shape {tuple(labels.shape)} but input_ids {tuple(ids.shape)}; "
                             "token labels must match the ids (use -100 where no loss is wanted)")
        if token_labels and isinstance(vocab, int) and labels.numel() and not labels.is_floating_point():
            bad = (labels != -100) & ((labels < 0) | (labels >= vocab))
            if bool(bad.any()):
                raise BatchError(f"{where}: labels hold {int(labels[bad][0])}, outside the vocabulary (0..{vocab - 1}) "
                                 "and not -100 (the ignore index)")
        if not token_labels and (labels.dim() != 1 or labels.shape[0] != ids.shape[0]):
            raise BatchError(f"{where}: labels have shape {tuple(labels.shape)}; give one label per row "
                             f"({ids.shape[0]},) or one per token {tuple(ids.shape)}")


def _sweep_one(prof: Profiler, model: nn.Module, batch: Any, index: int, loss_fn: LossFn, bar, total) -> None:
    """Forward, loss checks and backward of one batch (skipped and counted when padding-only or non-finite)."""
    kwargs = _as_kwargs(batch, prof.device)
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.numel() and not bool(mask.any()):
        prof._batch_index += 1
        prof.skip(prof._batch_index, "padding-only batch (attention_mask is all zero)")
        return
    check_batch(model, kwargs, index)
    # The user's model, loss_fn and backward: their errors come back as one BatchError naming the
    # batch (the original chained), our own as themselves.
    with _user_code(index, "the model's forward", kwargs):
        outputs = model(**kwargs)
    with _user_code(index, "loss_fn", kwargs):
        loss = _check_loss(loss_fn(outputs, batch))
    if not torch.isfinite(loss.detach()):
        prof.skip(prof._batch_index, f"non-finite loss ({loss.item()})")
        prof.acc.discard()
        return
    before = prof.rows
    with _user_code(index, "the backward pass", kwargs):
        loss.backward()
    prof.end_batch()
    if bar is not None:
        if total and getattr(bar, "lp_estimate", False):
            # Rows are non-padding tokens, known only per batch: estimate the sweep's total from
            # the mean rows per batch so far, so tqdm can show a percentage and an ETA (exact
            # when batches are unpadded; refined every batch).
            bar.total = max(int(round(prof.rows / (index + 1) * total)), prof.rows)
        bar.update(prof.rows - before)
        bar.set_postfix(batches=f"{index + 1}/{total or '?'}", refresh=False)
