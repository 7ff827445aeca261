"""What to try: the search space as an Optuna define-by-run function for Ray Tune's ``OptunaSearch``.

Define-by-run lets the space be conditional the way the question is: a from-scratch model has nothing
pretrained to freeze, so a ``scratch`` trial always trains every layer (``freeze_depth`` = 0) and TPE does not
waste samples on a dimension that means nothing there. The arms (pretrained, scratch) alternate trial by trial;
TPE searches freeze depth, both learning rates and the data fraction.

Fair arms: each arm's dimensions are separate Optuna parameters (``scratch.head_lr``, ``pretrained.head_lr``),
so TPE (univariate, Optuna's default) models each arm from that arm's trials only: scratch's learning rates are
not drawn from what suited fine-tuning. Every dimension is also returned under its plain name, which is what
the trial, the tables and the report read.

Several models: ``model`` is a categorical parameter of each arm, and freezing is searched as a share of the
model's parameter groups (``pretrained.freeze_share`` in [0, 1], one parameter for all models) mapped to a depth
per model by :func:`depth_for_share`. A share means the same thing in every family (0 = train all, 1 = linear
probe), so TPE learns from every model's trials where a depth would not carry over. Both are recorded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna

from tlsearch.config import Param, SpaceConfig


def suggest(trial: optuna.Trial, name: str, param: Param, *, integer: bool = False) -> tuple[Any, bool]:
    """(value, suggested?) for one dimension: fixed values are constants, not Optuna parameters."""
    if param.kind == "fixed":
        return param.value, False
    if param.kind == "choice":
        return trial.suggest_categorical(name, list(param.choices)), True
    assert param.low is not None and param.high is not None
    if integer:
        return trial.suggest_int(name, int(param.low), int(param.high)), True
    return trial.suggest_float(name, float(param.low), float(param.high), log=param.log), True


def take_arm(trial: optuna.Trial, init: Param, constants: dict[str, Any]) -> str:
    """The arm (pretrained or scratch) of a trial: round-robin over the choices, not sampled.

    ``init`` is the experiment's factor, not a hyperparameter to optimise: alternating keeps the arms' trial
    counts equal, so the scratch baseline gets the same budget as transfer. It is returned as a constant.
    """
    arms = init.values()
    constants["init"] = arms[trial.number % len(arms)]
    return str(constants["init"])


def depth_for_share(share: float, num_groups: int) -> int:
    """The freeze depth of a share of a model's ``num_groups`` groups: ``share * (num_groups - 1)``, rounded half
    up, so 0 trains everything and 1 freezes all but the classifier (a linear probe)."""
    return int(math.floor(share * (num_groups - 1) + 0.5))


def share_for_depth(depth: int, num_groups: int) -> float:
    """The share a depth is of a model's range (0 for a model with one group)."""
    return depth / (num_groups - 1) if num_groups > 1 else 0.0


@dataclass(frozen=True)
class DefineByRun:
    """The function OptunaSearch calls per trial (a picklable object, so Tune can save the searcher).

    It returns the constants: fixed dimensions and implied values (``freeze_depth`` = 0 for scratch, the depth of
    a sampled share, the share of a sampled depth). ``groups`` holds each model's number of parameter groups, as
    ``search.prepare`` counted them: needed to map a share to a depth, and to record a depth's share.
    """

    space: SpaceConfig
    groups: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.space.freeze_depth is None and self.space.freeze_share is None:
            raise ValueError("resolve freeze_depth against the model first (SpaceConfig.with_freeze_range)")
        missing = [m for m in self.space.models if m not in self.groups]
        if self.space.freeze_share is not None and missing:
            raise ValueError(f"a freeze share needs the number of parameter groups of {', '.join(missing)}")

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        constants: dict[str, Any] = {}
        arm = take_arm(trial, self.space.init, constants)
        prefix = f"{arm}." if len(self.space.init.values()) > 1 else ""

        def take(name: str, param: Param, integer: bool = False) -> Any:
            constants[name], _ = suggest(trial, prefix + name, param, integer=integer)
            return constants[name]

        model = str(take("model", self.space.model))
        if arm == "scratch":
            constants["freeze_depth"], constants["freeze_share"] = 0, 0.0
        elif self.space.freeze_share is not None:
            constants["freeze_depth"] = depth_for_share(take("freeze_share", self.space.freeze_share),
                                                        self.groups[model])
        else:
            assert self.space.freeze_depth is not None
            depth = take("freeze_depth", self.space.freeze_depth, integer=True)
            if model in self.groups:
                constants["freeze_share"] = share_for_depth(depth, self.groups[model])
        take("head_lr", self.space.head_lr)
        take("backbone_lr", self.space.backbone_lr)
        take("data_fraction", self.space.data_fraction)
        return constants
