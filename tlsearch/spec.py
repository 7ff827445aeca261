"""What a trial is given besides the searcher's choices: torch-free, so the processes that only schedule trials
(the driver, each trial's Tune function) unpickle it without importing torch or timm."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class InputSpec:
    """What the model eats: channels, square size and per-channel normalisation."""

    in_chans: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class TrialSpec:
    """Everything a worker needs that the searcher does not choose."""

    model: str
    num_classes: int
    input_spec: InputSpec
    max_epochs: int
    batch_size: int
    eval_batch_size: int
    weight_decay: float
    seed: int
    threads: int
    devices_per_worker: float
    precision: str = "auto"  # see Precision.resolve
    feature_cache: bool = True
    evaluate_test: bool = False  # only `tlsearch confirm` evaluates the test set every epoch; a search never does
    augment: str = "none"  # training-time augmentation level (tlsearch.augment), never validation or test
    input_specs: tuple[tuple[str, InputSpec], ...] = ()  # every searched model's own (normalisation may differ)

    def for_model(self, model: str) -> TrialSpec:
        """This spec for ``model`` (a trial's choice among the searched models); "" keeps the spec's own."""
        if not model or model == self.model:
            return self
        specs = dict(self.input_specs)
        if model not in specs:
            raise ValueError(f"model {model!r} is not one of this search's models: {', '.join(specs)}")
        return replace(self, model=model, input_spec=specs[model])
