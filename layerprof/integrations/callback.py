"""``LayerCardCallback``: profile inside a transformers ``Trainer`` before the first step.

On ``on_train_begin`` the callback takes the first ``batches`` batches of the Trainer's
own train dataloader, runs ``layerprof.profile`` on the model being trained (frozen, in
eval mode, restored bitwise afterwards) and writes into ``OUTPUT_DIR/layerprof/``:

- ``card.json``, ``card.md``, ``card.html`` — the Layer Card and its report;
- ``placement.json`` — the chosen plan (layers, modules, ranks, predicted gain, cost, Pareto front);
- ``lora_config.json`` — the plan's ``peft.LoraConfig`` as JSON (``layerprof.output.outputs``, as `layerprof card`);
- ``adapter/adapter_config.json`` — the plan as a PEFT LoRA config, plus any of
  ``axolotl.yml`` / ``llamafactory.yaml`` requested with ``exports=``.

If the Trainer's model is already a ``PeftModel`` (LoRA on every layer, the common
default), the base model is profiled with the adapters disabled and the card names the
base model's modules, so the placement applies to the next run's ``get_peft_model``.
Training then proceeds unchanged: the callback never alters the model, the optimizer
or the data order (the global RNG state is restored after reading the batches).
Under torch.distributed every rank profiles its own batches, the statistics are
summed, and only the main process writes.
"""
from __future__ import annotations

import itertools
import random
import sys
from dataclasses import replace
from pathlib import Path

import torch

from ..card.budget import TrainingBudget
from ..pipeline.config import ProfileConfig
from ..utils.errors import ProfileError, dependency_error

try:
    from transformers import TrainerCallback
except ImportError as e:
    raise dependency_error("transformers", "layerprof.integrations.callback", e) from e
from ..output.export import FORMATS


class LayerCardCallback(TrainerCallback):
    """Profile the first ``batches`` training batches and write the card and a placement.

    Placement: ``layers=k`` (default: a quarter of the layers), or ``budget=`` (fraction of
    full-LoRA cost), or ``target_gain=`` (cheapest placement reaching that fraction of the
    predicted gain). Other keyword arguments go to ``layerprof.profile`` (``rank``,
    ``damping``, ``targets``, ``backend``, ...). After training begins, ``self.card`` and
    ``self.plan`` hold the results.
    """

    def __init__(self, batches: int = 8, *, layers: int | None = None, budget: float | None = None,
                 target_gain: float | None = None, exports: tuple[str, ...] = ("peft",), subdir: str = "layerprof",
                 lora_alpha: float | None = None, predict: bool = True, config: ProfileConfig | None = None,
                 **profile_kwargs):
        if not isinstance(batches, int) or batches < 1:
            raise ProfileError(f"batches must be a positive int (training batches to profile), got {batches!r}")
        if sum(x is not None for x in (layers, budget, target_gain)) > 1:
            raise ProfileError("give at most one of layers=, budget=, target_gain= for the placement")
        unknown = set(exports) - set(FORMATS)
        if unknown:
            raise ProfileError(f"unknown export format(s) {sorted(unknown)}; choose from {', '.join(FORMATS)}")
        self.batches, self.layers, self.budget, self.target_gain = batches, layers, budget, target_gain
        self.exports, self.subdir, self.lora_alpha = tuple(exports), subdir, lora_alpha
        # predict=True: the budget-aware columns are computed for the run the Trainer is about to do
        # (its max steps, learning rate, AdamW settings; r and alpha of the PeftModel or of this callback).
        self.predict = predict
        # Checked now, with every other door's rules (layerprof.pipeline.config), not when training starts. With
        # predict=True and no budget given, the budget is the Trainer's run and is filled in then (a
        # stand-in meanwhile, so that e.g. score="sim_gain" validates).
        self._overrides = {"progress": False, **profile_kwargs} if config is None else dict(profile_kwargs)
        self._fill_budget = predict and self._overrides.get("budget", getattr(config, "budget", None)) is None
        self.config = ProfileConfig.build(config, {**self._overrides, "budget": TrainingBudget()}
                                          if self._fill_budget else self._overrides)
        self.card = None
        self.plan = None
        self.output_dir: Path | None = None

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        if model is None or train_dataloader is None:
            raise ProfileError("LayerCardCallback needs the Trainer's model and train dataloader (transformers "
                             "passes both to on_train_begin); use it with transformers.Trainer")
        batches = _first_batches(train_dataloader, self.batches)
        from ..pipeline.profiler import profile

        config = self.config
        if self._fill_budget:
            config = replace(config, budget=training_budget(args, state, model, config.rank, self.lora_alpha))
        if state.is_world_process_zero:
            # One line before (the sweep takes a while) and one after (_write); training output stays on stdout.
            budget = f" for a {config.budget.steps}-step fine-tune" if config.budget is not None else ""
            print(f"layerprof: profiling {type(model).__name__} on the first {len(batches)} training batches"
                  f"{budget} before step 1 (frozen; training is unchanged)", file=sys.stderr)
        # A PeftModel is profiled as its base model (layerprof.model.peft_models), by profile itself.
        card = profile(model, batches, config=config)
        self.card = card
        self.plan = self._place(card)
        self.output_dir = Path(args.output_dir) / self.subdir
        if state.is_world_process_zero:
            self._write(card, self.plan, _model_name(model))
        return control

    def _place(self, card):
        if self.target_gain is not None:
            return card.place(objective="cost", target_gain=self.target_gain)
        if self.budget is not None:
            return card.place(budget=self.budget)
        return card.place(layers=self.layers or card.default_layers())

    def _write(self, card, plan, name: str | None) -> None:
        from ..output.outputs import EXPORT_FILES, write_outputs

        out = self.output_dir
        r = card.rank
        alpha = self.lora_alpha if self.lora_alpha is not None else 2 * r
        write_outputs(card, plan, out, r=r, lora_alpha=alpha, exports=self.exports, base_model_name_or_path=name,
                      source="LayerCardCallback")
        # Say where the files went (one line on rank 0's stderr; training output stays on stdout).
        written = ", ".join(EXPORT_FILES[fmt] for fmt in self.exports)
        print(f"layerprof: Layer Card for {len(card.layers)} layers written to {out} (open card.html); "
              f"recommended layers {plan.layers} ({plan.predicted_gain_fraction:.0%} of the all-layer score at "
              f"{plan.cost:.0%} of full-LoRA training cost)" + (f", configs: {written}" if written else ""),
              file=sys.stderr)


def training_budget(args, state, model, rank: int, lora_alpha: float | None):
    """The ``TrainingBudget`` of the run a Trainer is about to do (Rule 2: the placement takes it).

    Steps from ``state.max_steps`` (set before ``on_train_begin``) or ``args.max_steps``; lr, betas,
    eps and weight decay from ``TrainingArguments``; r and alpha from the model's LoRA config when it
    is a PeftModel, else the profiling rank and ``lora_alpha`` (default 2r).
    """
    from ..card.budget import TrainingBudget

    steps = int(getattr(state, "max_steps", 0) or 0) or int(getattr(args, "max_steps", 0) or 0)
    if steps < 1:
        raise ProfileError("LayerCardCallback could not tell the number of training steps (state.max_steps and "
                         "args.max_steps are unset); set max_steps in TrainingArguments or pass predict=False")
    r, alpha = rank, lora_alpha if lora_alpha is not None else 2 * rank
    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, dict) and peft_config:
        cfg = peft_config.get(getattr(model, "active_adapter", "default")) or next(iter(peft_config.values()))
        r, alpha = int(getattr(cfg, "r", r)), float(getattr(cfg, "lora_alpha", alpha))
    return TrainingBudget(steps=steps, lr=float(args.learning_rate), r=r, lora_alpha=float(alpha),
                          betas=(float(args.adam_beta1), float(args.adam_beta2)), eps=float(args.adam_epsilon),
                          weight_decay=float(args.weight_decay))


def _first_batches(loader, n: int) -> list:
    """The loader's first ``n`` batches, with the global RNG states put back afterwards."""
    states = (torch.random.get_rng_state(), random.getstate(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)
    try:
        batches = list(itertools.islice(iter(loader), n))
    finally:
        torch.random.set_rng_state(states[0])
        random.setstate(states[1])
        if states[2] is not None:
            torch.cuda.set_rng_state_all(states[2])
    if not batches:
        raise ProfileError("the train dataloader yielded no batches; nothing to profile")
    return batches


def _model_name(model) -> str | None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(getattr(base, "config", None), "name_or_path", None) or None
