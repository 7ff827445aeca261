from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from tlsearch import feature_cache, features, models
from tlsearch.errors import DataError
from tlsearch.inputs import Payload, loaders
from tlsearch.models import InputSpec
from tlsearch.spec import TrialSpec
from tlsearch.train import Hyper, evaluate, normalizer, train_epoch

SPEC = InputSpec(3, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _frozen(name: str, depth: int | None = None) -> nn.Module:
    model = models.create(name, num_classes=3)
    groups = models.num_groups(model)
    models.apply_freeze(model, groups - 1 if depth is None else depth)
    return model


@pytest.mark.parametrize(("name", "expected"), [("test_resnet", True), ("test_efficientnet", True),
                                                 ("test_vit", True), ("test_convnext", False)])
def test_eligible_only_when_the_classifier_alone_trains(name: str, expected: bool) -> None:
    model = _frozen(name)  # linear probe: ConvNeXt's last group also holds head.norm, which trains
    assert features.eligible(model) is expected
    if expected:
        assert features.matches(model, torch.randn(2, 3, 32, 32))
    assert not features.eligible(_frozen(name, depth=0))


def test_classifier_on_features_reproduces_the_model() -> None:
    model = _frozen("test_resnet")
    x = torch.randn(4, 3, 32, 32)
    assert features.matches(model, x)
    broken = _frozen("test_resnet")
    broken.forward_head = lambda x, pre_logits=False: x.mean((2, 3)) * 2  # type: ignore[method-assign]
    assert not features.matches(broken, x)


def test_training_on_cached_features_equals_training_the_frozen_model() -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 255, (96, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 3, (96,))
    spec = TrialSpec("test_resnet", 3, SPEC, 2, 32, 64, 0.0, 0, 1, 1.0)
    hp = Hyper("pretrained", 5, 1e-2, 1e-3, 1.0)
    full = _frozen("test_resnet")
    probe = copy.deepcopy(full)
    normalize = normalizer(SPEC, torch.device("cpu"))
    loss_fn = nn.CrossEntropyLoss()

    def optimizer(model: nn.Module) -> tuple:
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=hp.head_lr)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)

    train_loader, val_loader, _ = loaders((images[:64], labels[:64]), (images[64:], labels[64:]), spec)
    train_epoch(full, train_loader, normalize, *optimizer(full), loss_fn)
    full_val = evaluate(full, val_loader, normalize, loss_fn)

    cached_train = features.compute(probe, images[:64], normalize)
    cached_val = features.compute(probe, images[64:], normalize)
    feat_train, feat_val, _ = loaders((cached_train, labels[:64]), (cached_val, labels[64:]), spec)
    classifier = probe.get_classifier()
    train_epoch(classifier, feat_train, lambda x: x, *optimizer(classifier), loss_fn)
    probe_val = evaluate(classifier, feat_val, lambda x: x, loss_fn)

    assert torch.allclose(full.fc.weight, probe.fc.weight, atol=1e-5)
    assert probe_val == pytest.approx(full_val, abs=1e-5)


def test_cache_computes_once_per_key() -> None:
    cache = feature_cache.FeatureCache()
    value = torch.ones(2, 4)
    first = feature_cache.Pass("train/5/0.1", seconds=2.0, devices=1.0, images=2, flops=10.0)
    cache.put(("train", 5, 0.1), value, first)
    # a second trial's copy does not replace the first, nor its cost
    cache.put(("train", 5, 0.1), torch.zeros(2, 4), feature_cache.Pass("train/5/0.1", 9.0, 1.0, 2, 10.0))
    got = cache.get(("train", 5, 0.1))
    assert got is not None and torch.equal(got[0], value) and got[1] == first
    assert cache.get(("train", 4, 0.1)) is None  # another freeze depth is another key


def test_a_shared_pass_is_charged_evenly_to_every_trial_that_used_it() -> None:
    import json
    from dataclasses import asdict

    from tlsearch.search.tables import charge_shared_passes

    train = feature_cache.Pass("train/5/0.1", seconds=3.0, devices=2.0, images=30, flops=90.0)
    val = feature_cache.Pass("val/5", seconds=1.0, devices=2.0, images=10, flops=30.0)
    passes = {"a": json.dumps([asdict(train), asdict(val)]), "b": json.dumps([asdict(train), asdict(val)]),
              "c": json.dumps([asdict(val)]), "d": None}
    trials = [{"trial_id": t, "train_flops": 100.0} for t in "abcd"]
    epochs = [{"trial_id": t, "epoch": e, "train_flops": 100.0 * e} for t in "abcd" for e in (1, 2)]
    charge_shared_passes(trials, epochs, passes)
    shared = {r["trial_id"]: r["shared_device_s"] for r in trials}
    # train pass: 6 device-s over a, b; val pass: 2 device-s over a, b, c; d used none
    assert shared == pytest.approx({"a": 3 + 2 / 3, "b": 3 + 2 / 3, "c": 2 / 3, "d": 0.0})
    assert sum(shared.values()) == pytest.approx(3.0 * 2 + 1.0 * 2)  # nothing lost, nothing counted twice
    flops = {(r["trial_id"], r["epoch"]): r["train_flops"] for r in epochs}
    assert flops[("a", 2)] == pytest.approx(200 + 45 + 10) and flops[("d", 1)] == 100.0


def test_forward_flops_of_the_frozen_part() -> None:
    model = _frozen("test_resnet")
    normalize = normalizer(SPEC, torch.device("cpu"))
    x = normalize(torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8))
    _, forward = models.train_flops_per_sample(model, SPEC, nn.CrossEntropyLoss())
    assert features.forward_flops_per_image(model, x) == pytest.approx(forward, rel=0.01)


def test_a_linear_probe_normalises_its_images_on_the_training_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """The normaliser is built on the training device; the payload's images are on the CPU. ``meta`` stands in
    for a GPU: any CPU image reaching the normaliser raises, as it would on a GPU before training starts."""
    from tlsearch import inputs

    meta = torch.device("meta")
    model = _frozen("test_resnet").to(meta)
    normalize = normalizer(SPEC, meta)
    seen: list[torch.device] = []

    def spy(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.device)
        return normalize(x)

    # meta tensors hold no values: compare nothing and compute placeholder features
    monkeypatch.setattr(features, "matches", lambda model, x: x.device == meta)
    monkeypatch.setattr(features, "compute", lambda model, images, norm, batch_size=512: torch.zeros(len(images), 8))
    images = torch.randint(0, 255, (12, 3, 32, 32), dtype=torch.uint8)
    payload = Payload(images, torch.arange(12) % 3, torch.arange(8).numpy(), torch.arange(8, 12).numpy(), None, 0)
    hp = Hyper("pretrained", models.num_groups(model) - 1, 1e-2, 1e-3, 1.0)
    idx = (torch.arange(8), torch.arange(8, 12), None)
    got = inputs._classifier_features(None, model, hp, payload, idx, spy, 1.0)
    assert got is not None and got.train.shape == (8, 8) and seen and set(seen) == {meta}


class _LocalCache:
    """A FeatureCache used in-process through the interface of its Ray actor handle (``get.remote``...)."""

    def __init__(self) -> None:
        self.actor = feature_cache.FeatureCache()
        self.get = SimpleNamespace(remote=self.actor.get)
        self.put = SimpleNamespace(remote=self.actor.put)
        self.claim = SimpleNamespace(remote=self.actor.claim)
        self.release = SimpleNamespace(remote=self.actor.release)


def test_the_cache_is_keyed_by_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two models at the same depth (both have 6 groups) on the same subset never share features."""
    import ray

    from tlsearch import inputs

    monkeypatch.setattr(ray, "get", lambda value: value)  # the local cache answers directly
    cache = _LocalCache()
    images = torch.randint(0, 255, (12, 3, 32, 32), dtype=torch.uint8)
    payload = Payload(images, torch.arange(12) % 3, torch.arange(8).numpy(), torch.arange(8, 12).numpy(), None, 0)
    idx = (torch.arange(8), torch.arange(8, 12), None)
    normalize = normalizer(SPEC, torch.device("cpu"))
    got, built = {}, {name: _frozen(name) for name in ("test_resnet", "resnet10t")}
    for name in ("test_resnet", "resnet10t", "test_resnet"):
        model = built[name]
        hp = Hyper("pretrained", 5, 1e-2, 1e-3, 1.0, model=name)
        got[name] = inputs._classifier_features(cache, model, hp, payload, idx, normalize, 1.0)
        assert got[name] is not None
        assert torch.allclose(got[name].train, features.compute(model, images[:8], normalize))
    keys = cache.actor.keys()  # the actor's method (a list of keys), not a dict's
    assert sorted(key[:3] for key in keys) == [
        ("train", "resnet10t", 5), ("train", "test_resnet", 5), ("val", "resnet10t", 5), ("val", "test_resnet", 5)]
    assert got["test_resnet"].computed_images == 0  # the second test_resnet probe took the first one's features


def _batches(ids: np.ndarray, dim: int, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(row ids, features) batches of ``ids`` in the order given: row r's features are all r."""
    for start in range(0, len(ids), size):
        rows = ids[start:start + size]
        yield rows, np.repeat(rows[:, None], dim, axis=1).astype(np.float32)


def test_stored_features_come_back_by_row_whatever_order_they_were_written_in(tmp_path: Path) -> None:
    ids = np.random.default_rng(0).permutation(np.arange(100, 150))  # Ray Data returns rows in no fixed order
    folder = features.key_folder(str(tmp_path), ("train", "test_resnet", 5, 0.5, 0))
    features.write(folder, len(ids), _batches(ids, 3, 7))
    wanted = np.array([149, 100, 120])
    assert torch.equal(features.read(folder, wanted), torch.tensor(wanted, dtype=torch.float32)[:, None].repeat(1, 3))
    with pytest.raises(DataError, match=r"rows \[7\] missing"):
        features.read(folder, np.array([100, 7]))
    other = features.key_folder(str(tmp_path), ("val", "test_resnet", 5))
    with pytest.raises(DataError, match="got 50 row.*expected 51"):
        features.write(other, 51, _batches(ids, 3, 7))
    assert not list(Path(other).iterdir())  # nothing half-written under the key's name


def test_every_model_depth_and_subset_has_its_own_folder(tmp_path: Path) -> None:
    keys = [("train", "test_resnet", 5, 0.5, 0), ("train", "test_resnet", 4, 0.5, 0), ("train", "resnet10t", 5, 0.5, 0),
            ("train", "test_resnet", 5, 0.25, 0), ("train", "test_resnet", 5, 0.5, 1), ("val", "test_resnet", 5),
            ("train", "hf-hub:timm/a/b", 5, 0.5, 0)]
    folders = {features.key_folder(str(tmp_path), key) for key in keys}
    assert len(folders) == len(keys) and all(Path(f).parent == tmp_path for f in folders)
    assert features.key_folder(str(tmp_path), keys[0]) == features.key_folder(str(tmp_path), keys[0])


def test_features_are_written_one_batch_at_a_time(tmp_path: Path) -> None:
    """16 MB of features in 64 batches: the writer never holds more than about one batch (256 kB)."""
    import tracemalloc

    ids = np.arange(64 * 64)
    tracemalloc.start()
    try:
        features.write(str(tmp_path / "f"), len(ids), _batches(ids, 1024, 64))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (tmp_path / "f" / features.FEATURES).stat().st_size > 16 * 2**20
    assert peak < 2 * 2**20, peak


def test_a_streamed_pass_runs_once_and_the_next_trial_reads_its_features(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.setattr(ray, "get", lambda value: value)  # the local cache answers directly
    cache, model = _LocalCache(), _frozen("test_resnet")
    normalize = normalizer(SPEC, torch.device("cpu"))
    images = torch.randint(0, 255, (10, 3, 32, 32), dtype=torch.uint8)
    ids, reads = np.arange(20, 30), []

    def batches() -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        for order in ([3, 4, 5], [0, 1, 2], [6, 7, 8, 9]):  # out of order, as Ray Data may deliver them
            reads.append(order)
            yield images[order], ids[order]

    key = ("train", "test_resnet", 5, 0.5, 0)
    first = features.stored(cache, key, str(tmp_path), len(ids), batches, model, normalize, 7.0, 2.0)
    second = features.stored(cache, key, str(tmp_path), len(ids), batches, model, normalize, 7.0, 2.0)
    assert first[2] and not second[2] and len(reads) == 3  # the second trial read no image
    assert first[:2] == second[:2] and first[1].images == 10 and first[1].flops == 70.0 and first[1].devices == 2.0
    assert torch.allclose(features.read(second[0], ids), features.compute(model, images, normalize), atol=1e-5)


def test_one_trial_at_a_time_computes_a_key() -> None:
    cache, key = feature_cache.FeatureCache(), ("val", "test_resnet", 5)
    assert cache.claim(key, "a") and not cache.claim(key, "b")  # b waits for a
    assert cache.claim(key, "a")  # a renews its claim
    assert cache.claim(key, "b", lease_s=0.0)  # a claim nobody renewed lapses
    cache.release(key, "a")  # not a's any more: nothing changes
    assert not cache.claim(key, "a")
    cache.release(key, "b")
    assert cache.claim(key, "a")
    cache.put(key, "folder", feature_cache.Pass("val/test_resnet/5", 1.0, 1.0, 2, 3.0))
    assert not cache.claim(key, "c")  # stored: nobody computes it again
