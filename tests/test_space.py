from __future__ import annotations

import optuna
import pytest

from tlsearch.config import Param, SpaceConfig
from tlsearch.space import DefineByRun, depth_for_share, share_for_depth


def _sample(space: SpaceConfig, n: int) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    fn = DefineByRun(space.with_freeze_range(6))
    out = []
    for _ in range(n):
        trial = study.ask()
        constants = fn(trial)
        out.append({**trial.params, **constants})
        study.tell(trial, 0.5)
    return out


def test_arms_alternate_and_scratch_trains_everything() -> None:
    configs = _sample(SpaceConfig(), 6)
    assert [c["init"] for c in configs] == ["pretrained", "scratch"] * 3
    assert all(c["freeze_depth"] == 0 for c in configs if c["init"] == "scratch")
    assert all(0 <= c["freeze_depth"] <= 5 for c in configs)
    assert all(1e-4 <= c["head_lr"] <= 3e-2 for c in configs)
    assert {c["data_fraction"] for c in configs} <= {0.01, 0.03, 0.1}


def test_fixed_values_are_constants_not_optuna_params() -> None:
    space = SpaceConfig(init=Param.fixed("pretrained"), head_lr=Param.fixed(0.01), freeze_depth=Param.fixed(3))
    study = optuna.create_study()
    trial = study.ask()
    constants = DefineByRun(space.with_freeze_range(6))(trial)
    assert {k: constants[k] for k in ("init", "freeze_depth", "head_lr")} == {
        "init": "pretrained", "freeze_depth": 3, "head_lr": 0.01}
    assert set(trial.params) == {"backbone_lr", "data_fraction"}  # one arm: plain names
    assert set(constants) == {"init", "freeze_depth", "head_lr", "backbone_lr", "data_fraction", "model"}


def test_each_arm_is_its_own_set_of_optuna_parameters() -> None:
    configs = _sample(SpaceConfig(), 4)
    assert {k for k in configs[0] if "." in k} == {"pretrained.freeze_depth", "pretrained.head_lr",
                                                   "pretrained.backbone_lr", "pretrained.data_fraction"}
    assert {k for k in configs[1] if "." in k} == {"scratch.head_lr", "scratch.backbone_lr",
                                                   "scratch.data_fraction"}
    assert configs[1]["head_lr"] == configs[1]["scratch.head_lr"]


def test_tpe_learns_each_arm_from_its_own_trials() -> None:
    """Scratch scores best at a low head LR, fine-tuning at a high one: TPE must find both, not one compromise."""
    import math

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    fn = DefineByRun(SpaceConfig(data_fraction=Param.fixed(0.1)).with_freeze_range(6))
    best = {"scratch": 1e-4, "pretrained": 3e-2}
    late: dict[str, list[float]] = {"scratch": [], "pretrained": []}
    for i in range(60):
        trial = study.ask()
        c = fn(trial)
        study.tell(trial, -abs(math.log10(c["head_lr"]) - math.log10(best[c["init"]])))
        if i >= 40:
            late[c["init"]].append(c["head_lr"])
    median = {arm: sorted(v)[len(v) // 2] for arm, v in late.items()}
    assert median["scratch"] < 1e-3 < median["pretrained"], median


def test_a_share_maps_to_each_models_depth() -> None:
    assert [depth_for_share(x, 6) for x in (0.0, 0.1, 0.5, 0.9, 1.0)] == [0, 1, 3, 5, 5]  # half up: 2.5 -> 3
    assert [depth_for_share(x, 8) for x in (0.0, 0.5, 1.0)] == [0, 4, 7]
    assert depth_for_share(1.0, 1) == 0 and share_for_depth(0, 1) == 0.0
    assert [share_for_depth(d, 6) for d in (0, 5)] == [0.0, 1.0]
    assert all(depth_for_share(share_for_depth(d, 8), 8) == d for d in range(8))


def test_several_models_share_one_freeze_parameter() -> None:
    space = SpaceConfig(model=Param.choice("a", "b")).with_freeze_range(6)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    fn = DefineByRun(space, {"a": 6, "b": 9})
    seen = []
    for _ in range(20):
        trial = study.ask()
        c = fn(trial)
        seen.append({**trial.params, **c})
        study.tell(trial, 0.5)
    pretrained = [c for c in seen if c["init"] == "pretrained"]
    assert {c["model"] for c in pretrained} == {"a", "b"} and {c["model"] for c in seen if c["init"] == "scratch"}
    assert all(c["freeze_depth"] == depth_for_share(c["freeze_share"], {"a": 6, "b": 9}[c["model"]])
               and c["freeze_share"] == c["pretrained.freeze_share"] for c in pretrained)
    assert {k for c in pretrained for k in c if "." in k} == {
        "pretrained.model", "pretrained.freeze_share", "pretrained.head_lr", "pretrained.backbone_lr",
        "pretrained.data_fraction"}  # no per-model depth: what TPE learns of the share serves every model
    assert all(c["freeze_depth"] == 0 and c["freeze_share"] == 0.0 for c in seen if c["init"] == "scratch")
    with pytest.raises(ValueError, match="parameter groups of b"):
        DefineByRun(space, {"a": 6})


def test_a_searched_depth_records_its_share() -> None:
    space = SpaceConfig(init=Param.fixed("pretrained"), freeze_depth=Param.range(0, 5))
    trial = optuna.create_study().ask()
    c = DefineByRun(space, {"resnet10t": 6})(trial)
    assert "freeze_share" not in trial.params and c["freeze_share"] == c["freeze_depth"] / 5


def test_tpe_learns_the_share_across_models() -> None:
    """Both models do best frozen at 80%: TPE finds it for both from one share parameter."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    space = SpaceConfig(init=Param.fixed("pretrained"), model=Param.choice("a", "b"))
    fn = DefineByRun(space.with_freeze_range(0), {"a": 6, "b": 14})
    late: dict[str, list[float]] = {"a": [], "b": []}
    for i in range(60):
        trial = study.ask()
        c = fn(trial)
        study.tell(trial, -abs(c["freeze_share"] - 0.8))
        if i >= 40:
            late[c["model"]].append(c["freeze_share"])
    assert all(v and 0.6 < sorted(v)[len(v) // 2] < 1.0 for v in late.values()), late
