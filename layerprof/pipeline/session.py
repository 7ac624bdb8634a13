"""The sweep session: ``Profiler`` owns the hooks, the batch boundaries and the skip accounting.

capture (taps) → accumulate (ops) while the ``with`` block runs; ``card()`` hands the
statistics to ``layerprof.pipeline.build.build_card``. A batch begins at each forward of the root
model (its ``attention_mask`` gives the row mask) and is committed when the next one
begins or when the card is taken; a batch whose statistics are non-finite is dropped
whole and counted.
"""
from __future__ import annotations

import hashlib
import time
import warnings
from dataclasses import replace
from typing import Any, Mapping

import torch
from torch import nn

from ..stats import ops
from ..stats.accumulate import Accumulator
from .build import build_card
from ..stats.capture import InputKeys, RowMask, Tap
from .config import ProfileConfig
from ..utils.errors import ProfileError
from ..card.scores import BUDGET_SCORES
from ..model.targets import Target, find_targets, linear_kind, modules_by_name


class Profiler:
    """Collect Layer Card statistics from backward passes run inside the ``with`` block.

    Each forward of ``model`` starts a batch; its ``attention_mask`` (if given as a
    keyword) excludes padding rows. Call ``card()`` after the block (or inside it).
    The statistics for module m are N_m, S_m = Σ x xᵀ, C_m = Σ x gᵀ, q_m = Σ ‖g‖²
    with g = ∂L/∂y over every backward pass run while profiling.

    Settings: a ``ProfileConfig`` and/or its fields as keywords (``Profiler(model, rank=4)``). A
    Profiler uses rank, damping, backend, dtype, targets, sketch and score; ``sketch="auto"``
    means dense here (only ``profile`` plans memory), and budget-aware scores need ``profile``.
    """

    def __init__(self, model: nn.Module, config: ProfileConfig | None = None, *, _owner: object | None = None,
                 _targets=None, **overrides):
        score = overrides.get("score", config.score if isinstance(config, ProfileConfig) else None)
        if score in BUDGET_SCORES:
            raise ProfileError(f"score={score!r} needs the fine-tune's budget and runs after the sweep: use "
                               f"lp.profile(model, batches, budget=..., score={score!r})")
        if not isinstance(model, nn.Module):
            raise ProfileError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        # A Profiler has no memory plan: sketch "auto" means dense here (profile() plans and passes the result).
        cfg = ProfileConfig.build(config, {"sketch": None, **overrides} if config is None else overrides)
        if cfg.sketch == "auto":
            cfg = replace(cfg, sketch=None)
        self.config = cfg
        from ..model.peft_models import base_layer_targets, is_peft_model

        self.model = model
        # A PeftModel is profiled as its base model (layerprof.model.peft_models): base layers, adapters off.
        self._peft = is_peft_model(model) and _owner is None  # profile() handles it itself
        self._adapters_off = None
        targets = _targets if _targets is not None else cfg.targets
        if self._peft:
            targets = base_layer_targets(targets)
        self.targets: dict[str, Target] = find_targets(model, targets)
        rank = cfg.rank
        too_small = [f"{t.name} ({t.d_in}×{t.d_out})" for t in self.targets.values() if rank > min(t.d_in, t.d_out)]
        if too_small:
            smallest = min(min(t.d_in, t.d_out) for t in self.targets.values())
            raise ProfileError(
                f"rank={rank} exceeds min(d_in, d_out) of {len(too_small)} target module(s): "
                f"{', '.join(too_small[:5])}{' …' if len(too_small) > 5 else ''}; "
                f"use rank <= {smallest} or exclude those modules with targets=")
        self.rank, self.damping, self.dtype, self.sketch = rank, cfg.damping, cfg.dtype, cfg.sketch
        self.device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.backend = ops.resolve_backend(cfg.backend, self.device.type)
        self.acc = Accumulator({n: (t.d_in, t.d_out) for n, t in self.targets.items()}, cfg.dtype, self.backend,
                               sketch=cfg.sketch, sketch_seed=cfg.sketch_seed)
        self._taps: list[Tap] = []
        self._root_handle = None
        self._mask: RowMask | None = None
        self._batch_rows: int | None = None
        self._shapes: list[tuple[int, int]] = []  # the batches' n × T (the cost model's sequence length)
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
        from ..model.claim import claim

        self._claimed = claim(self.model, self._owner)
        if self._peft:
            self._adapters_off = self.model.disable_adapter()
            self._adapters_off.__enter__()
        modules = modules_by_name(self.model, self.targets)
        self._versions = weight_versions(modules)
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
            from ..model.claim import release

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
        token_ids = isinstance(ids, torch.Tensor) and ids.dim() == 2 and not ids.is_floating_point()
        self._batch_rows = mask.rows if mask is not None else (ids.numel() if token_ids else None)
        shape = tuple(mask.mask.shape) if mask is not None else (tuple(ids.shape) if token_ids else None)
        if shape is not None:
            self._shapes.append(shape)
        if isinstance(ids, torch.Tensor):
            self._data_hash.update(ids.detach().cpu().contiguous().numpy().tobytes())
            if mask is not None:
                self._data_hash.update(mask.mask.cpu().numpy().tobytes())

    def _sink(self, name: str, x: torch.Tensor, g: torch.Tensor, mask: RowMask | None, input_id: int | None,
              y2: torch.Tensor | None = None) -> None:
        d_in, d_out = self.acc.dims[name]
        x2 = x.reshape(-1, d_in)
        g2 = g.reshape(-1, d_out)
        row_mask = mask.for_rows(x.shape[:-1]) if mask is not None else None
        if mask is not None and row_mask is None:
            # Rows of this call cannot be matched to (batch, position): e.g. a pooler that
            # reads one position per sequence. Every row counts; the card says so.
            self._unmasked.add(name)
        rows = x2.shape[0] if row_mask is None else mask.rows
        self.acc.update(name, x2, g2, row_mask, rows, input_id, y2=y2)

    @property
    def seq_len(self) -> float | None:
        """The batches' sequence length (padded positions), averaged over positions (``cost.mean_seq_len``);
        None when the inputs were not n × T token ids or masks."""
        from ..card.cost import mean_seq_len

        return mean_seq_len(self._shapes)

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

    def skip_unseen(self, reason: str) -> None:
        """Count a batch the model never saw (e.g. padding-only) as the next batch, skipped."""
        self._batch_index += 1
        self.skip(self._batch_index, reason)

    def skip_current(self, reason: str) -> None:
        """Drop the batch in progress (e.g. a non-finite loss) whole and count it."""
        self.skip(self._batch_index, reason)
        self.acc.discard()

    @property
    def rows(self) -> int:
        """Rows (non-padding token positions) of the committed batches."""
        return self._rows_total

    # ------------------------------------------------------------------ card
    def reduce(self) -> None:
        """Under torch.distributed, add up every rank's sums (once); what runs on the statistics after
        the sweep (coupling, the simulation, card()) then sees the global ones. Nothing in one process."""
        from ..stats.reduce import all_reduce_meta, all_reduce_stats, world

        if self._reduced is None and world()[1] > 1:
            if self._active:
                self.end_batch()
            all_reduce_stats(self.acc, list(self.targets))
            self._reduced = all_reduce_meta(self.rows, self._data_hash.hexdigest()[:16], self.skipped)

    def card(self, *, sweep_seconds: float | None = None, coupling: dict | None = None):
        """Finalize the statistics into a ``LayerCard`` (``layerprof.pipeline.build.build_card``)."""
        if self._active:
            self.end_batch()
        elapsed = self._elapsed + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)
        # Under torch.distributed every rank holds its shard's sums: add them up first, so
        # that every rank finalizes the same global card. Once only: the sums are then global,
        # and a second card() must not add them up again.
        self.reduce()
        if self._reduced is not None:
            rows, data_hash, skipped = self._reduced
        else:  # one process: nothing to combine, and the Profiler may go on sweeping after this card
            rows, data_hash, skipped = self.rows, self._data_hash.hexdigest()[:16], list(self.skipped)
        card = build_card(self.acc, self.targets, self.model, self.config, backend=self.backend,
                          rows=rows, data_hash=data_hash, skipped=skipped, unmasked=sorted(self._unmasked),
                          sweep_seconds=sweep_seconds if sweep_seconds is not None else elapsed,
                          device=self.device, coupling=coupling, seq_len=self.seq_len)
        self._warn_if_weights_changed(card)
        if self._peft:
            from ..model.peft_models import strip_base_layer

            card = strip_base_layer(card)
        return card

    def _warn_if_weights_changed(self, card) -> None:
        now = weight_versions(modules_by_name(self.model, [n for n in self._versions if n in card.meta["calls"]]))
        changed = sorted(n for n, v in now.items() if v != self._versions[n])
        if changed:
            # An optimizer stepping during the sweep: the statistics mix several weights.
            warnings.warn(f"the weights of {len(changed)} target module(s) changed while they were profiled "
                          f"({', '.join(changed[:3])}{' …' if len(changed) > 3 else ''}); the card mixes statistics "
                          "of different weights: profile before training starts, or with the optimizer paused",
                          stacklevel=3)
            card.meta["weights_changed"] = changed

    def mark_weights_restored(self) -> None:
        """After passes that move and restore the weights bitwise (coupling, curvature): not an optimizer step."""
        self._versions = weight_versions(modules_by_name(self.model, self._versions))


def weight_versions(modules: Mapping[str, nn.Module]) -> dict[str, int]:
    """Each module's weight version counter (in-place updates, e.g. an optimizer step, bump it)."""
    weights = {n: linear_kind(m).weight(m) for n, m in modules.items()}
    return {n: w._version for n, w in weights.items() if w is not None}
