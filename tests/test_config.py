"""ProfileConfig: one settings object, validated once, used by every door (profile, Profiler, CLI, callback)."""
import dataclasses

import pytest
import torch

import layerprof as lp
from conftest import make_batches, make_model
from layerprof.pipeline.config import ProfileConfig


@pytest.mark.parametrize("field, value, message", [
    ("rank", 0, "rank must be a positive int"),
    ("rank", True, "rank must be a positive int"),
    ("damping", -1.0, "damping is relative"),
    ("damping", 1e9, "damping is relative"),
    ("dtype", torch.float16, "statistics dtype"),
    ("max_tokens", 0, "max_tokens must be a positive int"),
    ("coupling_batches", 0, "coupling_batches must be a positive int"),
    ("coupling_tokens", 0, "coupling_tokens must be a positive int or None"),
    ("sketch", "dense", "sketch must be 'auto', None or a positive int"),
    ("sketch", 2, "smaller than rank"),
    ("max_memory", 0, "max_memory is bytes"),
    ("score", "best", "score must be one of"),
    ("score", "sim_gain", "budget="),
    ("predict", ("simulate",), "needs budget"),
])
def test_bad_settings_are_refused_with_the_fix(field, value, message):
    with pytest.raises(lp.ProfileError, match=message):
        ProfileConfig(**{field: value})


def test_every_field_has_help_and_the_defaults_round_trip():
    help_ = ProfileConfig.help()
    assert set(help_) == {f.name for f in dataclasses.fields(ProfileConfig)} and all(help_.values())
    cfg = ProfileConfig(budget={"steps": 30, "lr": 1e-3}, targets=("c_attn",))
    assert cfg.budget == lp.TrainingBudget(steps=30, lr=1e-3) and cfg.targets == ["c_attn"]
    assert cfg.predict == ("simulate", "warmup") and cfg.score is None
    assert ProfileConfig().predict == () and ProfileConfig().coupling is False  # the default placement needs none
    with pytest.raises(lp.ProfileError, match="coupling must be True, False or None"):
        ProfileConfig(coupling="yes")
    assert cfg.to_dict()["budget"]["steps"] == 30 and cfg.to_dict()["dtype"] == "float32"


def test_overrides_win_over_the_config_and_unknown_names_are_refused():
    base = ProfileConfig(rank=4, damping=1e-2)
    assert ProfileConfig.build(base, {"rank": 2}) == dataclasses.replace(base, rank=2)
    assert ProfileConfig.build(None, {}) == ProfileConfig()
    with pytest.raises(lp.ProfileError, match="unknown setting.*rnak"):
        ProfileConfig.build(base, {"rnak": 2})
    with pytest.raises(lp.ProfileError, match="config must be a layerprof.ProfileConfig"):
        ProfileConfig.build({"rank": 2}, {})


def test_profile_with_a_config_equals_profile_with_keywords():
    batches = make_batches(n=3)
    a = lp.profile(make_model("gpt2"), batches, config=ProfileConfig(rank=2, damping=1e-2, progress=False))
    b = lp.profile(make_model("gpt2"), batches, rank=2, damping=1e-2, progress=False)
    c = lp.profile(make_model("gpt2"), batches, config=ProfileConfig(rank=4, progress=False), rank=2, damping=1e-2)
    for other in (b, c):
        assert [m.resnorm for m in a.modules] == [m.resnorm for m in other.modules]
        assert a.meta["settings"] == other.meta["settings"]


def test_profiler_takes_the_same_config():
    model = make_model("gpt2")
    with lp.Profiler(model, ProfileConfig(rank=2, dtype=torch.float64)) as prof:
        for b in make_batches(n=2):
            model(**b).loss.backward()
    card = prof.card()
    assert card.meta["settings"]["rank"] == 2 and card.meta["settings"]["dtype"] == "float64"
    # A Profiler has no memory plan: the config's default sketch "auto" means dense there.
    assert card.meta["settings"]["sketch"] is None


def test_cli_card_options_default_to_the_config():
    from layerprof.cli.commands import build_parser, profile_config

    args = build_parser().parse_args(["card", "--no-predict"])
    cfg = profile_config(args)
    default = ProfileConfig(progress=True)
    for name in ("rank", "damping", "backend", "sketch", "max_tokens", "coupling", "targets", "score", "max_memory"):
        assert getattr(cfg, name) == getattr(default, name), name
    args = build_parser().parse_args(["card", "--rank", "4", "--steps", "30"])
    budget = profile_config(args).budget
    assert (budget.steps, budget.r, budget.lora_alpha, budget.lr) == (30, 4, 8, lp.TrainingBudget().lr)
