from __future__ import annotations

import optuna

from tlsearch.config import Param, SpaceConfig
from tlsearch.space import DefineByRun


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
    assert set(constants) == {"init", "freeze_depth", "head_lr", "backbone_lr", "data_fraction"}


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
