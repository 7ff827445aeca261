from __future__ import annotations

import math
from pathlib import Path

import pytest

from tlsearch.config import Param, SearchConfig, SpaceConfig, build_config, parse_param
from tlsearch.errors import ConfigError


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0.1", Param.fixed(0.1)),
        ("0.01,0.1", Param.choice(0.01, 0.1)),
        ("1e-4:1e-2", Param.range(1e-4, 1e-2, log=True)),
        ({"low": 1e-4, "high": 1e-2, "log": False}, Param.range(1e-4, 1e-2, log=False)),
        ([0.5, 0.5], Param.fixed(0.5)),
        ("0.2:0.2", Param.fixed(0.2)),
    ],
)
def test_parse_param_forms(raw: object, expected: Param) -> None:
    assert parse_param("head_lr", raw, cast=float, log=True) == expected


def test_parse_int_param_rejects_fractions() -> None:
    with pytest.raises(ConfigError, match="whole number"):
        parse_param("freeze_depth", "1.5", cast=int)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"head_lr": "1e-2:1e-4"}, "above high"),
        ({"backbone_lr": "0:1e-2"}, "must be > 0"),
        ({"data_fraction": "0"}, r"\(0, 1\]"),
        ({"data_fraction": "0.5:1.5"}, r"\(0, 1\]"),
        ({"trials": 0}, "trials"),
        ({"max_epochs": 2, "grace_period": 3}, "grace_period 3 is above max_epochs 2"),
        ({"name": "a/b"}, "no path separators"),
        ({"init": "imagenet"}, "valid: pretrained, scratch"),
        ({"freeze_depth": "-1"}, "freeze_depth"),
        ({"reduction_factor": 1}, "reduction_factor"),
    ],
)
def test_bad_values_are_one_clear_error(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(None, **overrides)


def test_yaml_file_with_flags_overriding(tmp_path: Path) -> None:
    path = tmp_path / "search.yaml"
    path.write_text("model: test_resnet\ntrials: 5\nspace:\n  data_fraction: [0.1, 0.5]\n  init: pretrained\n")
    config = build_config(path, trials=7)
    assert config.model == "test_resnet"
    assert config.trials == 7
    assert config.space.data_fraction == Param.choice(0.1, 0.5)
    assert config.space.init == Param.fixed("pretrained")


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "search.toml"
    path.write_text('model = "test_vit"\nmax_epochs = 3\n[space]\nhead_lr = {low = 0.001, high = 0.1}\n')
    config = build_config(path)
    assert config.max_epochs == 3
    assert config.space.head_lr == Param.range(0.001, 0.1, log=True)


def test_unknown_key_names_valid_keys(tmp_path: Path) -> None:
    path = tmp_path / "search.yaml"
    path.write_text("modle: resnet10t\n")
    with pytest.raises(ConfigError, match="unknown key.*modle.*valid:.*model"):
        build_config(path)


def test_wrong_type_in_file(tmp_path: Path) -> None:
    path = tmp_path / "search.yaml"
    path.write_text("trials: many\n")
    with pytest.raises(ConfigError, match="trials: expected a number, got 'many'"):
        build_config(path)


def test_freeze_range_resolved_and_checked() -> None:
    space = SpaceConfig()
    assert space.with_freeze_range(6).freeze_depth == Param.range(0, 5)
    with pytest.raises(ConfigError, match="valid depths are 0..5"):
        SpaceConfig(freeze_depth=Param.range(0, 6)).with_freeze_range(6)


def test_round_trip_to_dict() -> None:
    config = build_config(None, model="test_resnet", head_lr="0.01,0.02")
    assert SearchConfig.from_dict(config.to_dict()) == config


def test_asha_groups_are_validated() -> None:
    assert build_config(None).asha_groups == "init"
    assert build_config(None, asha_groups="init,data_fraction").asha_groups == "init,data_fraction"
    with pytest.raises(ConfigError, match="asha_groups: got 'model'; valid: init, init,data_fraction"):
        build_config(None, asha_groups="model")


def test_the_dimensions_have_one_source() -> None:
    import dataclasses

    from tlsearch.config import DIMENSIONS, Hyper
    from tlsearch.results import TRIALS

    assert list(DIMENSIONS) == [f.name for f in dataclasses.fields(Hyper)]
    assert {name: str(TRIALS.field(name).type) for name in DIMENSIONS} == {
        "init": "string", "freeze_depth": "int32", "head_lr": "double", "backbone_lr": "double",
        "data_fraction": "double", "model": "string", "freeze_share": "double"}
    hp = Hyper.from_config({"init": "scratch", "freeze_depth": "0", "head_lr": "0.1", "backbone_lr": 1,
                            "data_fraction": 0.5, "scratch.head_lr": 0.1, "model": "a", "freeze_share": "0"})
    assert hp == Hyper("scratch", 0, 0.1, 1.0, 0.5, "a", 0.0)
    hand_made = Hyper.from_config({"init": "scratch", "freeze_depth": 0, "head_lr": 0.1, "backbone_lr": 1,
                                   "data_fraction": 0.5})
    assert hand_made.model == "" and math.isnan(hand_made.freeze_share)  # the spec's model; share unknown
    with pytest.raises(KeyError):
        Hyper.from_config({"init": "scratch", "head_lr": 0.1, "backbone_lr": 1, "data_fraction": 0.5})


def test_several_models_search_a_share() -> None:
    config = build_config(None, model="test_resnet,test_vit", weights="test_vit=v.safetensors")
    assert config.space.models == ("test_resnet", "test_vit") and config.model == "test_resnet,test_vit"
    assert config.weights_by_model() == {"test_vit": "v.safetensors"}
    resolved = config.space.with_freeze_range(6)
    assert resolved.freeze_share == Param.range(0.0, 1.0) and resolved.freeze_depth is None
    one = build_config(None, model="test_resnet", weights="w.safetensors", freeze_share="0,0.5,1")
    assert one.weights_by_model() == {"test_resnet": "w.safetensors"}
    assert one.space.with_freeze_range(6).freeze_share == Param.choice(0.0, 0.5, 1.0)
    assert build_config(None, model="test_resnet").space.with_freeze_range(6).freeze_share is None


def test_a_config_file_lists_models_and_maps_weights(tmp_path: Path) -> None:
    path = tmp_path / "search.yaml"
    path.write_text("model: [test_resnet, test_vit]\nweights: {test_resnet: r.safetensors, test_vit: v.pt}\n"
                    "space:\n  freeze_share: {low: 0.2, high: 1}\n")
    config = build_config(path)
    assert config.space.model == Param.choice("test_resnet", "test_vit")
    assert config.weights_by_model() == {"test_resnet": "r.safetensors", "test_vit": "v.pt"}
    assert config.space.freeze_share == Param.range(0.2, 1.0)
    again = SearchConfig.from_dict(config.to_dict())  # as confirm reads the stored config back
    assert again == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": "a,b", "weights": "c=x.pt"}, "weights: got a file for 'c', which is not a searched model; "
                                                 "valid: a, b"),
        ({"model": "a,b", "weights": "x.pt"}, "one file 'x.pt' for 2 models; name its model, e.g. a=x.pt"),
        ({"model": "a,b", "weights": "a=x.pt,a=y.pt"}, "MODEL=FILE once per model"),
        ({"freeze_share": "0:1.5"}, r"freeze_share: must be in \[0, 1\].*got 0.0:1.5"),
        ({"freeze_share": "-0.1,0.5"}, r"freeze_share: must be in \[0, 1\]"),
        ({"model": "a,b", "freeze_depth": "0:3"}, "a depth counts groups, which differ per model; use freeze_share"),
        ({"freeze_depth": "0:3", "freeze_share": "0:1"}, "both given"),
        ({"model": "a:b"}, "model: got the range"),
    ],
)
def test_bad_models_weights_and_shares_are_one_clear_error(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(None, **overrides)
