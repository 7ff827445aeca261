"""Before Ray starts: check the whole request against the model, the weights and the data.

:func:`prepare` raises a :class:`~tlsearch.errors.TLSearchError` for any bad input before anything is written,
and returns a :class:`Plan`: the config with the model's freeze range resolved, the data decoded once, the
source weights loaded, the three disjoint splits. ``Plan.payload()`` is what every trial shares through Ray's
object store.

Checks run cheapest first, so the first error reported is the one found soonest: what needs no file, model or
network (the config itself, already checked by :class:`~tlsearch.config.SearchConfig`, and the models' names);
then local paths (the dataset, the weights files, a local results directory); then what builds each model (on
the meta device: its parameter groups) and reads the weights and the data; the network last (a remote results
location, the Ray address, hub weights).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, replace

import numpy as np
import torch

from tlsearch import data as data_mod
from tlsearch import loading, models, storage
from tlsearch.config import SearchConfig
from tlsearch.errors import ConfigError
from tlsearch.inputs import Payload
from tlsearch.models import InputSpec, SourceWeights
from tlsearch.search.session import Resources, check_reachable
from tlsearch.spec import TrialSpec
from tlsearch.stream import StreamSource


@dataclass(frozen=True)
class Plan:
    """A validated search: config with the freeze range resolved, data decoded, weights loaded, and three disjoint
    index sets into ``images``/``labels`` (every image of the target, decoded once, at the one size and number of
    channels every searched model takes; each model keeps its own normalisation in ``input_specs``)."""

    config: SearchConfig
    name: str
    groups: dict[str, int]  # parameter groups by model
    num_classes: int
    input_specs: dict[str, InputSpec]  # by model, in the order of config.space.models
    sources: dict[str, SourceWeights]  # pretrained weights by model (empty for a scratch-only search)
    images: torch.Tensor
    labels: torch.Tensor
    pool: np.ndarray  # training images: trials draw their data fractions from these
    val: np.ndarray  # validation images: every selection (TPE, ASHA, best epoch, best trial)
    test: np.ndarray  # test images: never seen by the search
    classes: tuple[str, ...]
    stream: StreamSource | None = None  # streamed (--data-loading): ``images`` is empty, Ray Data reads them

    @property
    def input_spec(self) -> InputSpec:
        """The first model's input spec (channels and size are every model's)."""
        return next(iter(self.input_specs.values()))

    @property
    def num_groups(self) -> int | None:
        """The model's parameter groups; None when the search has several models (see ``groups``)."""
        return next(iter(self.groups.values())) if len(self.groups) == 1 else None

    def describe_models(self) -> str:
        """``resnet10t (6 parameter groups)``, or every model's groups."""
        return ", ".join(f"{m} ({g} parameter groups)" for m, g in self.groups.items())

    @property
    def folder(self) -> str:
        """The search's folder (tables, report, exported model): RESULTS_DIR/NAME, a path or a URI."""
        return storage.join(storage.normalize(self.config.results_dir), self.name)

    @property
    def ray_storage(self) -> str:
        """Where Ray keeps the search's state and checkpoints: beside the tables."""
        return storage.join(self.folder, "_ray")

    def payload(self, with_test: bool = False) -> Payload:
        """The decoded data and source weights every trial shares (put once in the object store).

        A search's trials get no test indices at all; only ``tlsearch confirm`` passes ``with_test``.
        """
        return Payload(self.images, self.labels, self.pool, self.val, self.sources or None, self.config.seed,
                       self.test if with_test else None, self.stream,
                       storage.join(self.ray_storage, "features") if self.stream is not None else None)

    def trial_spec(self, resources: Resources) -> TrialSpec:
        """What every trial's workers need besides the searcher's choices."""
        cfg = self.config
        first = next(iter(self.input_specs))
        return TrialSpec(
            model=first, num_classes=self.num_classes, input_spec=self.input_specs[first], max_epochs=cfg.max_epochs,
            batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size, weight_decay=cfg.weight_decay,
            seed=cfg.seed, threads=resources.threads, precision=cfg.precision, feature_cache=cfg.feature_cache,
            devices_per_worker=resources.devices_per_worker, input_specs=tuple(self.input_specs.items()),
            augment=cfg.augment,
        )


def default_name() -> str:
    return "search-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def prepare(config: SearchConfig) -> Plan:
    """Check the config against the models, weights and data; raise TLSearchError before anything is written."""
    name = config.name or default_name()
    names = config.space.models
    for model in names:
        models.check_model_name(model)
    data_mod.check_spec(config.dataset)
    weights = config.weights_by_model()
    for path in weights.values():
        models.check_weights_file(path)
    if storage.is_local(config.results_dir):
        storage.check_writable(config.results_dir)

    probes = {model: models.probe(model) for model in names}
    groups = {model: models.num_groups(probe) for model, probe in probes.items()}
    space = config.space.with_freeze_range(groups[names[0]])  # a depth range: one model only (SpaceConfig)
    defaults = {model: models.input_spec(probe, config.image_size) for model, probe in probes.items()}
    sources = {model: models.resolve_source(model, path, defaults[model], config.image_size)
               for model, path in weights.items()}
    # memory or stream is decided on the largest input any model takes (weights' sidecars may change it)
    known = [sources[model].input_spec if model in sources else defaults[model] for model in names]
    largest = max(known, key=lambda s: s.in_chans * s.size * s.size)
    dataset = loading.load_target(config.dataset, config.data_dir, config.data_loading, largest)
    for path in weights.values():
        data_mod.check_unseen(config.dataset, dataset.classes, models.read_sidecar(path), path)
    splits = data_mod.split_rows(dataset.labels, dataset.split, config.val_size, config.test_size, config.seed)
    if len(np.unique(dataset.labels[splits.pool])) < 2 or len(splits.val) == 0 or len(splits.test) == 0:
        raise ConfigError(
            f"dataset {config.dataset} ({len(dataset)} images) is too small to hold out validation and test "
            f"images: {len(splits.pool)} training, {len(splits.val)} validation, {len(splits.test)} test"
        )

    _check_network(config)
    if "pretrained" in space.init.values():
        sources |= {model: models.resolve_source(model, None, defaults[model], config.image_size)
                    for model in names if model not in sources}
    specs = {model: sources[model].input_spec if model in sources else defaults[model] for model in names}
    spec = shared_input(specs)
    return Plan(
        config=replace(config, name=name, space=space), name=name, groups=groups,
        num_classes=len(dataset.classes), input_specs=specs, sources=sources,
        images=loading.model_images(dataset, spec), labels=torch.from_numpy(dataset.labels),
        pool=splits.pool, val=splits.val, test=splits.test, classes=dataset.classes,
        stream=loading.source_of(dataset, spec),
    )


def shared_input(specs: dict[str, InputSpec]) -> InputSpec:
    """The images are decoded once for every model: all must take the same channels and size (refused, not
    resized per trial, so that every model sees the very same pixels and no trial pays a resize)."""
    shapes = {model: (s.in_chans, s.size) for model, s in specs.items()}
    if len(set(shapes.values())) > 1:
        got = ", ".join(f"{model} {c}x{n}x{n}" for model, (c, n) in shapes.items())
        raise ConfigError(f"the models take different inputs ({got}), but the images are decoded once for all of "
                          "them; pass --image-size N, with weights made for the same number of channels")
    return next(iter(specs.values()))


def _check_network(config: SearchConfig) -> None:
    """What needs the network: a remote results location and a Ray cluster's address."""
    if not storage.is_local(config.results_dir):
        storage.check_writable(config.results_dir)
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address and address != "auto":
        check_reachable(address)
