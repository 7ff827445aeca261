"""Before Ray starts: check the whole request against the model, the weights and the data.

:func:`prepare` raises a :class:`~tlsearch.errors.TLSearchError` for any bad input before anything is written,
and returns a :class:`Plan`: the config with the model's freeze range resolved, the data decoded once, the
source weights loaded, the three disjoint splits. ``Plan.payload()`` is what every trial shares through Ray's
object store.

Checks run cheapest first, so the first error reported is the one found soonest: what needs no file, model or
network (the config itself, already checked by :class:`~tlsearch.config.SearchConfig`, and the model's name);
then local paths (the dataset, the weights file, a local results directory); then what builds the model and reads
the weights and the data; the network last (a remote results location, the Ray address, hub weights).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, replace

import numpy as np
import torch

from tlsearch import data as data_mod
from tlsearch import models, storage
from tlsearch.config import SearchConfig
from tlsearch.errors import ConfigError
from tlsearch.inputs import Payload
from tlsearch.models import InputSpec, SourceWeights
from tlsearch.search.session import Resources, check_reachable
from tlsearch.spec import TrialSpec


@dataclass(frozen=True)
class Plan:
    """A validated search: config with the freeze range resolved, data decoded, weights loaded, and three disjoint
    index sets into ``images``/``labels`` (every image of the target, decoded once)."""

    config: SearchConfig
    name: str
    num_groups: int
    num_classes: int
    input_spec: InputSpec
    source: SourceWeights | None
    images: torch.Tensor
    labels: torch.Tensor
    pool: np.ndarray  # training images: trials draw their data fractions from these
    val: np.ndarray  # validation images: every selection (TPE, ASHA, best epoch, best trial)
    test: np.ndarray  # test images: never seen by the search
    classes: tuple[str, ...]

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
        return Payload(self.images, self.labels, self.pool, self.val, self.source, self.config.seed,
                       self.test if with_test else None)

    def trial_spec(self, resources: Resources) -> TrialSpec:
        """What every trial's workers need besides the searcher's choices."""
        cfg = self.config
        return TrialSpec(
            model=cfg.model, num_classes=self.num_classes, input_spec=self.input_spec, max_epochs=cfg.max_epochs,
            batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size, weight_decay=cfg.weight_decay,
            seed=cfg.seed, threads=resources.threads, precision=cfg.precision, feature_cache=cfg.feature_cache,
            devices_per_worker=resources.devices_per_worker,
        )


def default_name() -> str:
    return "search-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def prepare(config: SearchConfig) -> Plan:
    """Check the config against the model, weights and data; raise TLSearchError before anything is written."""
    name = config.name or default_name()
    models.check_model_name(config.model)
    data_mod.check_spec(config.dataset)
    if config.weights:
        models.check_weights_file(config.weights)
    if storage.is_local(config.results_dir):
        storage.check_writable(config.results_dir)

    probe = models.create(config.model, num_classes=2)
    groups = models.num_groups(probe)
    space = config.space.with_freeze_range(groups)
    default_spec = models.input_spec(probe, config.image_size)
    source = None
    if config.weights:
        source = models.resolve_source(config.model, config.weights, default_spec, config.image_size)
    dataset = data_mod.load(config.dataset, "target", config.data_dir)
    if config.weights:
        data_mod.check_unseen(config.dataset, dataset.classes, models.read_sidecar(config.weights), config.weights)
    splits = data_mod.three_way_split(dataset, config.val_size, config.test_size, config.seed)
    if len(np.unique(dataset.labels[splits.pool])) < 2 or len(splits.val) == 0 or len(splits.test) == 0:
        raise ConfigError(
            f"dataset {config.dataset} ({len(dataset)} images) is too small to hold out validation and test "
            f"images: {len(splits.pool)} training, {len(splits.val)} validation, {len(splits.test)} test"
        )

    _check_network(config)
    if source is None and "pretrained" in space.init.values():
        source = models.resolve_source(config.model, None, default_spec, config.image_size)
    spec = source.input_spec if source else default_spec
    return Plan(
        config=replace(config, name=name, space=space), name=name, num_groups=groups,
        num_classes=len(dataset.classes), input_spec=spec, source=source,
        images=data_mod.to_model_input(dataset, spec.in_chans, spec.size), labels=torch.from_numpy(dataset.labels),
        pool=splits.pool, val=splits.val, test=splits.test, classes=dataset.classes,
    )


def _check_network(config: SearchConfig) -> None:
    """What needs the network: a remote results location and a Ray cluster's address."""
    if not storage.is_local(config.results_dir):
        storage.check_writable(config.results_dir)
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address and address != "auto":
        check_reachable(address)
