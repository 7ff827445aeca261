"""Typed, frozen configuration: what a search is, validated before Ray starts.

A search is described by :class:`SearchConfig`; the dimensions it searches over by :class:`SpaceConfig`, whose
fields are each a :class:`Param` (a fixed value, a numeric range or a list of choices). Configs are built from
plain mappings (a YAML/TOML file merged with CLI flags), never exec'd, and are serialisable back to mappings.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tlsearch.errors import ConfigError

INITS = ("pretrained", "scratch")


@dataclass(frozen=True)
class Hyper:
    """What the searcher chose for one trial: the search dimensions, in table order.

    The one list of dimensions: :data:`DIMENSIONS` (names and Arrow column types) is derived from it, and the
    tables, the report, the export and confirm read that. A new dimension is a field here, one in
    :class:`SpaceConfig` (what may be tried) and a line in ``space.DefineByRun`` (how it is sampled).
    """

    init: str
    freeze_depth: int  # the depth the trial trains with (from freeze_share when that is searched)
    head_lr: float
    backbone_lr: float
    data_fraction: float
    model: str = ""  # the timm model; "" (a Hyper built by hand) = the trial spec's one model
    freeze_share: float = math.nan  # freeze_depth / (groups - 1): comparable across models; nan = not known

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Hyper:
        """From a Tune config (which also holds each arm's Optuna parameters, ``scratch.head_lr``, ...)."""
        casts = {"str": str, "int": int, "float": float}
        return cls(**{f.name: casts[str(f.type)](config[f.name]) for f in dataclasses.fields(cls)
                      if f.name in config or f.default is dataclasses.MISSING})


_ARROW_TYPES = {"str": "string", "int": "int32", "float": "float64"}
DIMENSIONS: dict[str, str] = {f.name: _ARROW_TYPES[str(f.type)] for f in dataclasses.fields(Hyper)}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # auto: bf16 where the GPU has it, else fp16; fp32 on CPUs
# Fair arms: ASHA compares a trial with the trials of its own arm (and, optionally, of its own data fraction).
ASHA_GROUPS = ("init", "init,data_fraction")
DATA_LOADINGS = ("auto", "memory", "stream")  # auto: memory when the decoded images fit (stream.choose_loading)
AUGMENTS = ("none", "light", "strong")  # training-time augmentation levels (augment.py)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class ModelResources:
    """What each Train worker of one model's trials holds, where it differs from the search's defaults."""

    cpus_per_worker: float | None = None  # None: the search's cpus_per_worker
    gpus_per_worker: float | None = None  # None: the search's gpus_per_worker


RESOURCE_KEYS = tuple(f.name for f in dataclasses.fields(ModelResources))
_RESOURCES_HELP = "give {model: {cpus_per_worker: N, gpus_per_worker: N}} or MODEL=CPUS:GPUS,..."


def parse_model_resources(raw: Any) -> tuple[tuple[str, ModelResources], ...]:
    """Per-model worker resources from a config mapping ``{model: {cpus_per_worker, gpus_per_worker}}``, the flag
    string ``MODEL=CPUS[:GPUS],...`` (``MODEL=:GPUS`` for GPUs only), or pairs already parsed."""
    if isinstance(raw, str):
        raw = [_resources_item(item) for item in raw.split(",") if item.strip()]
    if isinstance(raw, Mapping):
        raw = list(raw.items())
    if not isinstance(raw, Sequence):
        raise ConfigError(f"model_resources: got {raw!r}; {_RESOURCES_HELP}")
    parsed: dict[str, ModelResources] = {}
    for pair in raw:
        name, value = pair if isinstance(pair, tuple | list) and len(pair) == 2 else (None, pair)
        if not isinstance(name, str) or name in parsed:
            raise ConfigError(f"model_resources: got {pair!r}; {_RESOURCES_HELP}, once per model")
        if isinstance(value, Mapping):
            keys = {str(k).replace("-", "_"): v for k, v in value.items()}
            _reject_unknown(f"model_resources.{name}", keys, set(RESOURCE_KEYS))
            value = ModelResources(**{k: None if v is None else _cast(f"model_resources.{name}.{k}", v, float)
                                      for k, v in keys.items()})
        if not isinstance(value, ModelResources):
            raise ConfigError(f"model_resources.{name}: got {value!r}; {_RESOURCES_HELP}")
        parsed[name] = value
    return tuple(parsed.items())


def _resources_item(item: str) -> tuple[str, dict[str, str]]:
    """``MODEL=CPUS[:GPUS]`` -> (model, its keys)."""
    name, sep, shape = (p.strip() for p in item.partition("="))
    cpus, _, gpus = (p.strip() for p in shape.partition(":"))
    if not sep or not name or not (cpus or gpus):
        raise ConfigError(f"model_resources: got {item.strip()!r}; give MODEL=CPUS:GPUS per worker, e.g. "
                          "vit_small_patch16_224=2:0.5 (or MODEL=CPUS, MODEL=:GPUS)")
    return name, {key: value for key, value in zip(RESOURCE_KEYS, (cpus, gpus), strict=True) if value}


@dataclass(frozen=True)
class Param:
    """One search dimension: a fixed ``value``, a ``low``..``high`` range, or a list of ``choices``."""

    kind: Literal["fixed", "range", "choice"]
    value: Any = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    @classmethod
    def fixed(cls, value: Any) -> Param:
        return cls("fixed", value=value)

    @classmethod
    def range(cls, low: float, high: float, log: bool = False) -> Param:
        return cls("range", low=low, high=high, log=log)

    @classmethod
    def choice(cls, *choices: Any) -> Param:
        return cls("choice", choices=tuple(choices))

    def values(self) -> tuple[Any, ...]:
        """The finite values this dimension can take (fixed and choice only)."""
        if self.kind == "fixed":
            return (self.value,)
        if self.kind == "choice":
            return self.choices
        raise ConfigError("a range has no finite list of values")

    def bounds(self) -> tuple[Any, Any]:
        """Smallest and largest value this dimension can take."""
        if self.kind == "range":
            return self.low, self.high
        vals = self.values()
        return min(vals), max(vals)

    def to_dict(self) -> Any:
        if self.kind == "fixed":
            return self.value
        if self.kind == "choice":
            return list(self.choices)
        return {"low": self.low, "high": self.high, "log": self.log}

    def __str__(self) -> str:
        if self.kind == "fixed":
            return str(self.value)
        if self.kind == "choice":
            return ",".join(str(c) for c in self.choices)
        return f"{self.low}:{self.high}" + (" (log)" if self.log else "")


def parse_param(name: str, raw: Any, *, cast: type, log: bool = False) -> Param:
    """Parse one search dimension from a config value or a flag string.

    Accepted: a scalar (fixed), a list (choices), a mapping ``{low, high[, log]}`` (range), or the flag strings
    ``"0.1"``, ``"0.01,0.1,0.5"`` and ``"1e-4:1e-1"``.
    """
    if isinstance(raw, Param):
        return raw
    if isinstance(raw, str):
        text = raw.strip()
        if ":" in text:
            lo, _, hi = text.partition(":")
            raw = {"low": lo, "high": hi}
        elif "," in text:
            raw = [t.strip() for t in text.split(",") if t.strip()]
    if isinstance(raw, Mapping):
        unknown = set(raw) - {"low", "high", "log"}
        if unknown or "low" not in raw or "high" not in raw:
            raise ConfigError(
                f"{name}: a range needs keys low and high (and optionally log), got {sorted(raw)}"
            )
        lo, hi = _cast(name, raw["low"], cast), _cast(name, raw["high"], cast)
        use_log = bool(raw.get("log", log))
        if lo > hi:
            raise ConfigError(f"{name}: range low {lo} is above high {hi}; give low <= high")
        if lo == hi:
            return Param.fixed(lo)
        return Param.range(lo, hi, log=use_log)
    if isinstance(raw, Sequence) and not isinstance(raw, str):
        values = tuple(_cast(name, v, cast) for v in raw)
        if not values:
            raise ConfigError(f"{name}: an empty list of choices; give at least one value")
        if len(set(values)) == 1:
            return Param.fixed(values[0])
        return Param.choice(*values)
    return Param.fixed(_cast(name, raw, cast))


def _cast(name: str, value: Any, cast: type) -> Any:
    if cast is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected text, got {value!r}")
        return value
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if cast is int:
        if not number.is_integer():
            raise ConfigError(f"{name}: expected a whole number, got {value!r}")
        return int(number)
    if not math.isfinite(number):
        raise ConfigError(f"{name}: expected a finite number, got {value!r}")
    return number


@dataclass(frozen=True)
class SpaceConfig:
    """What to try: the search dimensions.

    ``model`` is one timm name or a choice of several. Freezing is searched one of two ways. ``freeze_depth``
    counts the model's leading parameter groups that stay frozen: 0 trains everything, G-1 (G = number of groups)
    is a linear probe; ``None`` means the model's whole range, resolved once the model is known; one model only,
    since a depth means different things in different families. ``freeze_share`` is a share of the groups in
    [0, 1], mapped to a depth per model (``space.depth_for_share``): what several models search (0:1 by default).
    """

    freeze_depth: Param | None = None
    freeze_share: Param | None = None
    model: Param = field(default_factory=lambda: Param.fixed("resnet10t"))
    head_lr: Param = field(default_factory=lambda: Param.range(1e-4, 3e-2, log=True))
    backbone_lr: Param = field(default_factory=lambda: Param.range(1e-5, 1e-2, log=True))
    data_fraction: Param = field(default_factory=lambda: Param.choice(0.01, 0.03, 0.1))
    init: Param = field(default_factory=lambda: Param.choice(*INITS))

    def __post_init__(self) -> None:
        for name in ("head_lr", "backbone_lr"):
            lo, _ = getattr(self, name).bounds()
            if lo <= 0:
                raise ConfigError(f"{name}: learning rates must be > 0, got {getattr(self, name)}")
        lo, hi = self.data_fraction.bounds()
        if lo <= 0 or hi > 1:
            raise ConfigError(f"data_fraction: must be in (0, 1], got {self.data_fraction}")
        for value in self.init.values():
            if value not in INITS:
                raise ConfigError(f"init: got {value!r}; valid: {', '.join(INITS)}")
        if self.freeze_depth is not None:
            lo, _ = self.freeze_depth.bounds()
            if lo < 0:
                raise ConfigError(f"freeze_depth: must be >= 0, got {self.freeze_depth}")
        self._check_models_and_share()

    def _check_models_and_share(self) -> None:
        if self.model.kind == "range":
            raise ConfigError(f"model: got the range {self.model}; give a timm name or a list 'a,b,c'")
        if self.freeze_share is not None:
            lo, hi = self.freeze_share.bounds()
            if lo < 0 or hi > 1:
                raise ConfigError(f"freeze_share: must be in [0, 1] (0 = train all, 1 = linear probe), "
                                  f"got {self.freeze_share}")
            if self.freeze_depth is not None:
                raise ConfigError(f"freeze_depth {self.freeze_depth} and freeze_share {self.freeze_share} both "
                                  "given; search one of them")
        if self.freeze_depth is not None and len(self.models) > 1:
            raise ConfigError(f"freeze_depth: got {self.freeze_depth} for several models ({', '.join(self.models)}),"
                              " but a depth counts groups, which differ per model; use freeze_share 0:1 instead")

    @property
    def models(self) -> tuple[str, ...]:
        """The timm models this search tries."""
        return tuple(str(m) for m in self.model.values())

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> SpaceConfig:
        _reject_unknown("space", raw, {f.name for f in dataclasses.fields(cls)})
        kwargs: dict[str, Any] = {}
        if raw.get("freeze_depth") not in (None, "auto"):
            kwargs["freeze_depth"] = parse_param("freeze_depth", raw["freeze_depth"], cast=int)
        if raw.get("freeze_share") is not None:
            kwargs["freeze_share"] = parse_param("freeze_share", raw["freeze_share"], cast=float)
        if raw.get("model") is not None:
            kwargs["model"] = parse_param("model", raw["model"], cast=str)
        for name in ("head_lr", "backbone_lr"):
            if raw.get(name) is not None:
                kwargs[name] = parse_param(name, raw[name], cast=float, log=True)
        if raw.get("data_fraction") is not None:
            kwargs["data_fraction"] = parse_param("data_fraction", raw["data_fraction"], cast=float)
        if raw.get("init") is not None:
            kwargs["init"] = parse_param("init", raw["init"], cast=str)
        return cls(**kwargs)

    def with_freeze_range(self, num_groups: int) -> SpaceConfig:
        """Resolve ``freeze_depth`` against a model with ``num_groups`` parameter groups, checking its range; with
        several models (or a share asked for), the share instead: 0:1 unless given."""
        if self.freeze_share is not None or len(self.models) > 1:
            return dataclasses.replace(self, freeze_share=self.freeze_share or Param.range(0.0, 1.0))
        top = num_groups - 1
        if self.freeze_depth is None:
            return dataclasses.replace(self, freeze_depth=Param.range(0, top) if top > 0 else Param.fixed(0))
        lo, hi = self.freeze_depth.bounds()
        if hi > top:
            raise ConfigError(
                f"freeze_depth: got {self.freeze_depth}, but this model has {num_groups} parameter groups; "
                f"valid depths are 0..{top} (0 = train all, {top} = linear probe)"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: (None if getattr(self, f.name) is None else getattr(self, f.name).to_dict())
            for f in dataclasses.fields(self)
        }


@dataclass(frozen=True)
class SearchConfig:
    """A whole search: data, model, budget, scheduler, resources and the space."""

    dataset: str = "digits-split"
    weights: str | None = None  # FILE (one model) or "model=FILE,model=FILE"; see weights_by_model
    data_dir: str | None = None
    image_size: int | None = None
    trials: int = 12
    max_epochs: int = 8
    grace_period: int = 1
    reduction_factor: int = 2
    name: str | None = None
    results_dir: str = "results"
    seed: int = 0
    address: str | None = None
    batch_size: int = 64
    eval_batch_size: int = 256
    val_size: int = 1000
    test_size: float = 0.2
    weight_decay: float = 0.01
    num_workers: int = 1
    cpus_per_worker: float | None = None
    use_gpu: bool | None = None
    gpus_per_worker: float = 1.0
    precision: str = "auto"
    max_concurrent: int | None = None
    trial_timeout_s: float | None = None
    feature_cache: bool = True
    data_loading: str = "auto"  # memory | stream | auto (by the decoded size)
    augment: str = "none"  # none | light | strong, training images only
    asha_groups: str = "init"  # ASHA ranks a trial only among trials of the same values of these dimensions
    # per-model worker resources (a bigger model may need more per worker); others take the defaults above
    model_resources: tuple[tuple[str, ModelResources], ...] = ()
    space: SpaceConfig = field(default_factory=SpaceConfig)

    def __post_init__(self) -> None:
        positive = {
            "trials": self.trials,
            "max_epochs": self.max_epochs,
            "grace_period": self.grace_period,
            "batch_size": self.batch_size,
            "eval_batch_size": self.eval_batch_size,
            "val_size": self.val_size,
            "num_workers": self.num_workers,
        }
        for key, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{key}: must be a whole number > 0, got {value!r}")
        if self.grace_period > self.max_epochs:
            raise ConfigError(
                f"grace_period {self.grace_period} is above max_epochs {self.max_epochs}; "
                "ASHA needs grace_period <= max_epochs"
            )
        if self.reduction_factor < 2:
            raise ConfigError(f"reduction_factor: must be >= 2, got {self.reduction_factor}")
        if self.name is not None and not _NAME_RE.match(self.name):
            raise ConfigError(
                f"name: got {self.name!r}; use 1-100 letters, digits, '.', '_' or '-', no path separators"
            )
        if self.image_size is not None and self.image_size < 8:
            raise ConfigError(f"image_size: must be >= 8 pixels, got {self.image_size}")
        _check_cpus("cpus_per_worker", self.cpus_per_worker)
        if self.max_concurrent is not None and self.max_concurrent <= 0:
            raise ConfigError(f"max_concurrent: must be > 0, got {self.max_concurrent}")
        if self.data_loading not in DATA_LOADINGS:
            raise ConfigError(f"data_loading: got {self.data_loading!r}; valid: {', '.join(DATA_LOADINGS)}")
        if self.augment not in AUGMENTS:
            raise ConfigError(f"augment: got {self.augment!r}; valid: {', '.join(AUGMENTS)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision: got {self.precision!r}; valid: {', '.join(PRECISIONS)}")
        if self.precision in ("bf16", "fp16") and self.use_gpu is not True:
            raise ConfigError(f"precision: got {self.precision} without --gpu; mixed precision needs GPUs "
                              "(pass --gpu, or use auto or fp32)")
        _check_gpus("gpus_per_worker", self.gpus_per_worker, self.use_gpu)
        if self.trial_timeout_s is not None and self.trial_timeout_s <= 0:
            raise ConfigError(f"trial_timeout_s: must be > 0 seconds, got {self.trial_timeout_s}")
        if not 0 < self.test_size < 1:
            raise ConfigError(f"test_size: must be in (0, 1), the share of the target images held out for the test "
                              f"set when the dataset names none, got {self.test_size}")
        if self.asha_groups not in ASHA_GROUPS:
            raise ConfigError(f"asha_groups: got {self.asha_groups!r}; valid: {', '.join(ASHA_GROUPS)}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay: must be >= 0, got {self.weight_decay}")
        self.weights_by_model()
        self._check_model_resources()

    def _check_model_resources(self) -> None:
        object.__setattr__(self, "model_resources", parse_model_resources(self.model_resources))
        models = self.space.models
        for name, wanted in self.model_resources:
            if name not in models:
                raise ConfigError(f"model_resources: got an entry for {name!r}, which is not a searched model; "
                                  f"valid: {', '.join(models)}")
            _check_cpus(f"model_resources.{name}.cpus_per_worker", wanted.cpus_per_worker)
            if wanted.gpus_per_worker is not None:
                _check_gpus(f"model_resources.{name}.gpus_per_worker", wanted.gpus_per_worker, self.use_gpu)

    def resources_for(self, model: str) -> ModelResources:
        """``model``'s entry of ``model_resources`` (empty: the defaults)."""
        return dict(self.model_resources).get(model, ModelResources())

    @property
    def model(self) -> str:
        """The model, or the searched models as ``a,b,c``."""
        return ",".join(self.space.models)

    def weights_by_model(self) -> dict[str, str]:
        """Weights files by model: ``FILE`` names the only model's, ``a=FILE,b=FILE`` each listed model's; a
        model without a file takes timm's pretrained weights (hub or cache)."""
        if not self.weights:
            return {}
        models = self.space.models
        if "=" not in self.weights:
            if len(models) > 1:
                raise ConfigError(f"weights: got one file {self.weights!r} for {len(models)} models; name its model, "
                                  f"e.g. {models[0]}={self.weights}")
            return {models[0]: self.weights}
        found: dict[str, str] = {}
        for item in (t.strip() for t in self.weights.split(",") if t.strip()):
            name, _, path = (p.strip() for p in item.partition("="))
            if not path or name in found:
                raise ConfigError(f"weights: got {item!r}; give MODEL=FILE once per model, e.g. {models[0]}=a.pt")
            if name not in models:
                raise ConfigError(f"weights: got a file for {name!r}, which is not a searched model; "
                                  f"valid: {', '.join(models)}")
            found[name] = path
        return found

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> SearchConfig:
        """Build from a mapping (file contents merged with flags); unknown keys and wrong types are errors."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        space_keys = {f.name for f in dataclasses.fields(SpaceConfig)}
        raw = dict(raw)
        space_raw = dict(raw.pop("space", None) or {})
        for key in list(raw):
            if key in space_keys:
                space_raw[key] = raw.pop(key)
        _reject_unknown("config", raw, set(fields) - {"space"} | space_keys | {"space"})
        kwargs: dict[str, Any] = {"space": SpaceConfig.from_dict(space_raw)}
        if isinstance(raw.get("weights"), Mapping):  # a config file's {model: FILE}
            raw["weights"] = ",".join(f"{name}={path}" for name, path in raw["weights"].items())
        for key, value in raw.items():
            if value is not None:
                kwargs[key] = value if key == "model_resources" else _coerce(key, value, fields[key].type)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "space"}
        out["model_resources"] = {name: {k: v for k, v in dataclasses.asdict(r).items() if v is not None}
                                  for name, r in self.model_resources} or None
        out["space"] = self.space.to_dict()
        return out


def _check_cpus(key: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"{key}: must be > 0, got {value:g}")


def _check_gpus(key: str, value: float, use_gpu: bool | None) -> None:
    if value <= 0:
        raise ConfigError(f"{key}: must be > 0, got {value:g}")
    if value > 1 and not float(value).is_integer():
        raise ConfigError(f"{key}: got {value:g}; valid: a share of one GPU in (0, 1] "
                          "(0.5: two workers share a GPU) or a whole number of GPUs")
    if value != 1 and use_gpu is not True:
        raise ConfigError(f"{key}: got {value:g} without --gpu; pass --gpu too")


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    text = str(annotation)
    if text.startswith("int"):
        return _cast(key, value, int)
    if text.startswith("float"):
        return _cast(key, value, float)
    if text.startswith("bool"):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if text.startswith("str"):
        if isinstance(value, Path):
            return str(value)
        return _cast(key, value, str)
    raise ConfigError(f"{key}: unsupported value {value!r}")  # pragma: no cover - every field is typed above


def _reject_unknown(where: str, raw: Mapping[str, Any], valid: set[str]) -> None:
    unknown = sorted(set(raw) - valid)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or TOML config file into a mapping."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it ({exc.strerror})") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"config file {path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of keys to values, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build_config(file: str | Path | None = None, **overrides: Any) -> SearchConfig:
    """Merge a config file with overrides (flags win; ``None`` means "not given") and validate."""
    merged: dict[str, Any] = load_file(file) if file is not None else {}
    space = dict(merged.pop("space", None) or {})
    merged.update({k: v for k, v in overrides.items() if v is not None})
    if space:
        merged["space"] = {**space, **{k: merged.pop(k) for k in list(merged) if k in _SPACE_FIELDS}}
    return SearchConfig.from_dict(merged)


_SPACE_FIELDS = {f.name for f in dataclasses.fields(SpaceConfig)}
