from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from tlsearch import models
from tlsearch.errors import ModelError, WeightsError
from tlsearch.models import InputSpec

FAMILIES = ["test_resnet", "test_vit", "test_efficientnet", "test_convnext"]  # ResNet, ViT, EfficientNet, ConvNeXt
SPEC = InputSpec(3, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _train_step(model: nn.Module) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)
    model.train()
    loss = model(torch.randn(4, 3, 32, 32)).logsumexp(1).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


@pytest.mark.parametrize("name", FAMILIES)
def test_groups_cover_every_parameter_once(name: str) -> None:
    model = models.create(name, num_classes=3)
    groups = models.param_groups(model)
    flat = [n for g in groups for n in g]
    assert sorted(flat) == sorted(n for n, _ in model.named_parameters())
    assert len(flat) == len(set(flat))
    head = {n for n, _ in model.get_classifier().named_parameters()}
    assert {n.rsplit(".", 1)[-1] for n in groups[-1]} >= head  # the classifier is in the last group


@pytest.mark.parametrize("name", FAMILIES)
def test_freeze_depth_trains_exactly_the_later_groups(name: str) -> None:
    for depth in range(models.num_groups(models.create(name, num_classes=3))):
        model = models.create(name, num_classes=3)
        groups = models.param_groups(model)
        plan = models.apply_freeze(model, depth)
        expected = {n for g in groups[depth:] for n in g}
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        # Frozen BatchNorm layers become FrozenBatchNorm2d (buffers), so they leave named_parameters.
        assert trainable == expected & {n for n, _ in model.named_parameters()}
        assert set(plan.head) == set(groups[-1])
        assert set(plan.backbone) == {n for g in groups[depth:-1] for n in g}
        before = {k: v.clone() for k, v in model.state_dict().items()}
        _train_step(model)
        after = model.state_dict()
        frozen_prefixes = {n.rsplit(".", 1)[0] for g in groups[:depth] for n in g}
        for key, value in before.items():
            owner = key.rsplit(".", 1)[0]
            if owner in frozen_prefixes and value.is_floating_point():
                assert torch.equal(value, after[key]), f"{name} depth {depth}: frozen {key} changed"


def test_vit_root_params_are_frozen_with_the_stem() -> None:
    model = models.create("test_vit", num_classes=3)
    models.apply_freeze(model, 1)
    assert not model.cls_token.requires_grad
    assert not model.pos_embed.requires_grad


def test_frozen_batchnorm_running_stats_do_not_move() -> None:
    model = models.create("test_resnet", num_classes=3)
    models.apply_freeze(model, 2)
    stats = model.bn1.running_mean.clone()
    _train_step(model)
    assert torch.equal(stats, model.bn1.running_mean)
    trainable_bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert trainable_bn, "later groups keep ordinary BatchNorm"


class NoMatcher(nn.Module):
    """A model without group_matcher (like MetaFormer or PiT in timm)."""

    def __init__(self) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1))
        self.stem = nn.Conv2d(3, 4, 3)
        self.body = nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Linear(4, 2)

    def get_classifier(self) -> nn.Module:
        return self.head


def test_fallback_groups_for_models_without_group_matcher() -> None:
    model = NoMatcher()
    groups = models.param_groups(model)
    assert groups == [["token", "stem.weight", "stem.bias"], ["body.0.weight", "body.0.bias", "body.1.weight",
                      "body.1.bias"], ["head.weight", "head.bias"]]
    models.apply_freeze(model, 2)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]


def test_real_timm_model_without_group_matcher_gets_groups() -> None:
    model = models.create("poolformer_s12", num_classes=3)
    groups = models.param_groups(model)
    assert len(groups) >= 3
    assert "head.fc.fc2.weight" in groups[-1] or any("head" in n for n in groups[-1])


@pytest.mark.parametrize("name", ["test_resnet", "test_vit", "test_efficientnet", "mobilenetv3_small_050"])
def test_a_probe_costs_no_memory_and_has_the_models_groups(name: str) -> None:
    probe = models.probe(name)
    assert {p.device.type for p in probe.parameters()} == {"meta"}
    assert models.num_groups(probe) == models.num_groups(models.create(name, num_classes=2))
    assert models.input_spec(probe) == models.input_spec(models.create(name, num_classes=2))


def test_a_model_that_cannot_be_built_on_meta_is_probed_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    real = models.timm.create_model

    def no_meta(name: str, **kwargs: object) -> nn.Module:
        if torch.empty(0).device.type == "meta":
            raise NotImplementedError("an initialiser with no meta kernel")
        return real(name, **kwargs)

    monkeypatch.setattr(models.timm, "create_model", no_meta)
    assert {p.device.type for p in models.probe("test_resnet").parameters()} == {"cpu"}
    with pytest.raises(ModelError, match="unknown timm model"):
        models.probe("resnet10x")


def test_freeze_depth_out_of_range() -> None:
    model = models.create("test_resnet", num_classes=3)
    with pytest.raises(ModelError, match="outside 0..5"):
        models.apply_freeze(model, 6)


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(ModelError, match="unknown timm model 'resnet10x'.*resnet10t"):
        models.check_model_name("resnet10x")


def test_train_flops_shrink_as_more_is_frozen() -> None:
    loss = nn.CrossEntropyLoss()
    flops = []
    for depth in range(models.num_groups(models.create("test_resnet", num_classes=3))):
        model = models.create("test_resnet", num_classes=3)
        models.apply_freeze(model, depth)
        train, forward = models.train_flops_per_sample(model, SPEC, loss)
        flops.append((train, forward))
    forwards = {round(f) for _, f in flops}
    assert len(forwards) == 1, "forward cost does not depend on freezing"
    trains = [t for t, _ in flops]
    assert trains == sorted(trains, reverse=True)
    assert trains[0] > 2.5 * flops[0][1]  # full fine-tuning: forward + ~2x backward
    assert trains[-1] < 1.1 * flops[-1][1]  # linear probe: barely more than forward


def _save_source(tmp_path: Path, name: str = "test_resnet", suffix: str = ".safetensors") -> Path:
    model = models.create(name, num_classes=5)
    path = tmp_path / f"source{suffix}"
    if suffix == ".safetensors":
        models.save(model, path, {"model": name, "num_classes": 5,
                                  "input": {"in_chans": 3, "size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}})
    else:
        torch.save(model.state_dict(), path)
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_load_and_classifier_is_reset(tmp_path: Path, suffix: str) -> None:
    path = _save_source(tmp_path, suffix=suffix)
    source = models.resolve_source("test_resnet", str(path), SPEC)
    assert source.num_classes == 5
    model = models.build("test_resnet", 3, source)
    assert model.get_classifier().out_features == 3
    original = models.load_state_dict_file(path)
    assert torch.equal(model.state_dict()["conv1.0.weight"], original["conv1.0.weight"])
    if suffix == ".safetensors":
        assert source.input_spec.size == 32


def test_weights_for_another_architecture_are_refused(tmp_path: Path) -> None:
    path = _save_source(tmp_path, name="test_vit", suffix=".pt")
    with pytest.raises(WeightsError, match="do not fit 'test_resnet'"):
        models.resolve_source("test_resnet", str(path), SPEC)


def test_sidecar_for_another_model_is_refused(tmp_path: Path) -> None:
    path = _save_source(tmp_path)
    with pytest.raises(WeightsError, match="trained for model 'test_resnet'"):
        models.resolve_source("test_vit", str(path), SPEC)


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch pwned",))


def test_malicious_pickle_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"weight": _Evil()}, fh)
    with pytest.raises(WeightsError, match="cannot be read safely"):
        models.load_state_dict_file(path)
    assert not (tmp_path / "pwned").exists()


def test_missing_hub_weights_offline_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match="pass --weights FILE"):
        models.resolve_source("test_resnet", None, SPEC)


@pytest.fixture
def unreachable_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No network: HF_HUB_OFFLINE unset, a hub endpoint nothing listens on, an empty cache (returned)."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_unreachable_hub_fails_in_seconds_with_what_to_do(unreachable_hub: Path) -> None:
    import time

    import huggingface_hub.constants as hub_constants

    started = time.perf_counter()
    with pytest.raises(WeightsError, match=r"hub at http://127.0.0.1:9 cannot be reached.*pass --weights FILE, "
                                           r"make one with `tlsearch pretrain`, or set HF_HUB_OFFLINE=1"):
        models.resolve_source("test_resnet", None, SPEC)
    assert time.perf_counter() - started < 3  # huggingface_hub's retries alone would wait 23 s per file
    assert hub_constants.HF_HUB_OFFLINE is False  # offline mode was only for the call


def test_unreachable_hub_still_serves_the_cache(unreachable_hub: Path) -> None:
    from safetensors.torch import save_file

    model = models.create("test_resnet", num_classes=1000)
    repo = unreachable_hub / "models--timm--test_resnet.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    (repo / "snapshots" / ("a" * 40)).mkdir(parents=True)
    save_file(model.state_dict(), str(repo / "snapshots" / ("a" * 40) / "model.safetensors"))
    source = models.resolve_source("test_resnet", None, SPEC)
    assert source.origin == "hub:test_resnet" and source.num_classes == 0
    assert torch.equal(source.state_dict["conv1.0.weight"], model.state_dict()["conv1.0.weight"])


def test_a_model_timm_has_no_weights_for_is_refused_at_once() -> None:
    with pytest.raises(WeightsError, match="timm has no pretrained weights for 'botnet50ts_256'; pass --weights"):
        models.hub_model("botnet50ts_256")
