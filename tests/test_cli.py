from __future__ import annotations

from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from tlsearch import models
from tlsearch.cli import cli


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, command in group.commands.items():
        out.append((*prefix, name))
        if isinstance(command, click.Group):
            out.extend(_commands(command, (*prefix, name)))
    return out


@pytest.mark.parametrize("path", _commands(cli))
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"], catch_exceptions=False)
    assert result.exit_code == 0
    assert "Usage:" in result.output
    command = cli
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    assert command.help, f"{' '.join(path)} has no help text"


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    model = models.create("test_vit", num_classes=5)
    path = tmp_path / "vit.pt"
    torch.save(model.state_dict(), path)
    return path


def _bad_inputs(tmp_path: Path, image_folder: Path, weights: Path) -> dict[str, tuple[list[str], str]]:
    one_class = tmp_path / "one"
    (one_class / "only").mkdir(parents=True)
    for f in list((image_folder / "class0").iterdir())[:3]:
        (one_class / "only" / f.name).write_bytes(f.read_bytes())
    broken = tmp_path / "broken"
    for c in ("a", "b"):
        (broken / c).mkdir(parents=True)
        for f in list((image_folder / "class0").iterdir())[:3]:
            (broken / c / f.name).write_bytes(f.read_bytes())
    (broken / "b" / "x.png").write_bytes(b"garbage")
    corrupt = tmp_path / "table.parquet"
    corrupt.write_bytes(b"PAR1 not really parquet")
    tiny = tmp_path / "tiny"  # two images a class: one for the test set, one for training, none left for val
    for c in ("a", "b"):
        (tiny / c).mkdir(parents=True)
        for f in list((image_folder / "class0").iterdir())[:2]:
            (tiny / c / f.name).write_bytes(f.read_bytes())
    seen = tmp_path / "seen.safetensors"  # pretrained on all of digits: the target digits-split's images too
    models.save(models.create("test_resnet", num_classes=10), seen,
                {"model": "test_resnet", "dataset": "digits", "classes": [str(d) for d in range(10)]})
    nowhere = str(tmp_path / "nothing")
    return {
        "unknown model": (["--model", "resnet10x"], "unknown timm model 'resnet10x'"),
        "freeze depth": (["--freeze-depth", "9"], "valid depths are 0..5"),
        "fraction zero": (["--data-fraction", "0"], "data_fraction: must be in (0, 1]"),
        "fraction above one": (["--data-fraction", "1.5"], "data_fraction: must be in (0, 1]"),
        "lr inverted": (["--head-lr", "0.1:0.001"], "above high"),
        "trials": (["--trials", "0"], "trials: must be a whole number > 0"),
        "grace": (["--max-epochs", "2", "--grace-period", "3"], "grace_period 3 is above max_epochs 2"),
        "name": (["--name", "../evil"], "no path separators"),
        "one class": (["--dataset", str(one_class)], "1 class(es)"),
        "empty": (["--dataset", str(tmp_path / "nothing")], "neither a built-in"),
        "unreadable": (["--dataset", str(broken)], "unreadable image"),
        "other architecture": (["--weights", str(weights)], "do not fit 'test_resnet'"),
        "missing weights offline": (["--init", "pretrained"], "pass --weights FILE"),
        "missing weights file": (["--weights", str(tmp_path / "nope.pt")], "does not exist"),
        "lr not positive": (["--backbone-lr", "0:0.1"], "learning rates must be > 0"),
        "corrupt parquet": (["--dataset", str(corrupt)], "cannot be read"),
        "unreachable address": (["--address", f"127.0.0.1:{_free_port()}"], "cannot reach Ray at 127.0.0.1:"),
        "address without port": (["--address", "somewhere"], "has no port"),
        "test size zero": (["--test-size", "0"], "test_size: must be in (0, 1)"),
        "test size one": (["--test-size", "1"], "test_size: must be in (0, 1)"),
        "too small for a test set": (["--dataset", str(tiny)], "too small to hold out validation and test"),
        "source saw the target": (["--weights", str(seen)], "its validation and test images would not be unseen"),
        "bad dataset before hub weights": (["--dataset", nowhere, "--init", "pretrained"], "neither a built-in"),
        "bad dataset before weights file": (["--dataset", nowhere, "--weights", str(tmp_path / "nope.pt")],
                                            "neither a built-in"),
        "resources for another model": (["--model-resources", "resnet10t=2"],
                                        "model_resources: got an entry for 'resnet10t', which is not a searched model"),
        "resources not positive": (["--model-resources", "test_resnet=0"],
                                   "model_resources.test_resnet.cpus_per_worker: must be > 0, got 0"),
    }


CASES = ["unknown model", "freeze depth", "fraction zero", "fraction above one", "lr inverted", "lr not positive",
         "trials", "grace", "name", "one class", "empty", "unreadable", "corrupt parquet", "other architecture",
         "missing weights offline", "missing weights file", "unreachable address", "address without port",
         "test size zero", "test size one", "too small for a test set", "source saw the target",
         "bad dataset before hub weights", "bad dataset before weights file", "resources for another model",
         "resources not positive"]


def _free_port() -> int:
    import socket

    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_nothing_written(
    case: str, tmp_path: Path, image_folder: Path, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    args, message = _bad_inputs(tmp_path, image_folder, weights)[case]
    results = tmp_path / "results"
    base = ["run", "--model", "test_resnet", "--dataset", "digits-split", "--init", "scratch",
            "--results-dir", str(results), "--name", "bad"]
    result = CliRunner().invoke(cli, base + args, catch_exceptions=False)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert message in lines[0]
    assert not results.exists() or not any(results.iterdir())


def test_config_file_with_a_wrong_type(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('max_epochs = "ten"\n')
    result = CliRunner().invoke(cli, ["run", "--config", str(path)], catch_exceptions=False)
    assert result.exit_code == 2
    assert "max_epochs: expected a number, got 'ten'" in result.output


def test_config_file_with_unknown_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("trails: 3\n")
    result = CliRunner().invoke(cli, ["run", "--config", str(path)], catch_exceptions=False)
    assert result.exit_code == 2
    assert "unknown key(s) trails" in result.output


def test_config_file_with_unknown_model_resources_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: test_resnet\nmodel_resources:\n  test_resnet: {cpus: 2}\n")
    result = CliRunner().invoke(cli, ["run", "--config", str(path), "--results-dir", str(tmp_path / "r")],
                                catch_exceptions=False)
    assert result.exit_code == 2 and not (tmp_path / "r").exists()
    assert "model_resources.test_resnet: unknown key(s) cpus; valid: cpus_per_worker, gpus_per_worker" in result.output


def test_results_dir_not_writable(tmp_path: Path) -> None:
    blocked = tmp_path / "ro"
    blocked.mkdir()
    blocked.chmod(0o500)
    try:
        import os

        if os.access(blocked, os.W_OK):
            pytest.skip("running as root: permissions do not bind")
        result = CliRunner().invoke(
            cli, ["run", "--model", "test_resnet", "--results-dir", str(blocked / "r")], catch_exceptions=False
        )
        assert result.exit_code == 2 and "not writable" in result.output
    finally:
        blocked.chmod(0o700)


def test_results_dir_that_is_a_file(tmp_path: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    result = CliRunner().invoke(
        cli, ["run", "--model", "test_resnet", "--results-dir", str(afile / "r")], catch_exceptions=False
    )
    assert result.exit_code == 2 and "not writable" in result.output


def test_pretrain_writes_weights_and_sidecar(tmp_path: Path) -> None:
    out = tmp_path / "w.safetensors"
    args = ["pretrain", "--dataset", "digits-split", "--model", "test_resnet", "--out", str(out),
            "--image-size", "16"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    meta = models.read_sidecar(out)
    assert meta["model"] == "test_resnet" and meta["num_classes"] == 5
    assert meta["input"]["size"] == 16 and meta["input"]["in_chans"] == 1
    assert 0 <= meta["val_acc"] <= 1
    again = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert "reusing" in again.output
