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
    assert constants == {"init": "pretrained", "freeze_depth": 3, "head_lr": 0.01}
    assert set(trial.params) == {"backbone_lr", "data_fraction"}
