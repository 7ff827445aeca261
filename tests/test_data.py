from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tlsearch import data
from tlsearch.errors import DataError


def test_nested_and_stratified_fractions() -> None:
    labels = np.repeat(np.arange(4), [100, 50, 30, 20])
    pool = np.arange(len(labels))
    subsets = {f: set(data.nested_fraction(labels, pool, f, seed=3)) for f in (0.1, 0.25, 0.5, 1.0)}
    assert subsets[0.1] < subsets[0.25] < subsets[0.5] < subsets[1.0]
    picked = labels[sorted(subsets[0.1])]
    assert np.bincount(picked).tolist() == [10, 5, 3, 2]  # each class in proportion
    assert set(data.nested_fraction(labels, pool, 0.1, seed=3)) == subsets[0.1]  # deterministic per seed
    assert set(data.nested_fraction(labels, pool, 0.1, seed=4)) != subsets[0.1]


def test_every_class_keeps_at_least_one_image() -> None:
    labels = np.repeat(np.arange(3), [200, 5, 5])
    subset = data.nested_fraction(labels, np.arange(len(labels)), 0.01, seed=0)
    assert set(labels[subset]) == {0, 1, 2}


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_bad_fraction(fraction: float) -> None:
    with pytest.raises(DataError, match=r"\(0, 1\]"):
        data.nested_fraction(np.zeros(4, dtype=int), np.arange(4), fraction, seed=0)


def test_validation_split_is_stratified_and_disjoint() -> None:
    labels = np.repeat(np.arange(2), [80, 20])
    pool, val = data.stratified_split(labels, val_size=10, seed=0)
    assert not set(pool) & set(val)
    assert len(pool) + len(val) == 100
    assert np.bincount(labels[val]).tolist() == [8, 2]


def test_digits_split_halves() -> None:
    source, target = data.load("digits-split", "source"), data.load("digits-split", "target")
    assert source.classes == ("0", "1", "2", "3", "4")
    assert target.classes == ("5", "6", "7", "8", "9")
    assert source.images.dtype == np.uint8 and source.images.shape[1:] == (8, 8, 1)
    assert len(source) + len(target) == len(data.load("digits"))


def test_fashion_mnist_from_idx_files(tmp_path: Path) -> None:
    import gzip
    import struct

    def idx(arr: np.ndarray) -> bytes:
        return struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()

    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 10)):
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(idx(rng.integers(0, 255, (n, 28, 28), dtype=np.uint8))))
        (tmp_path / f"{prefix}-labels-idx1-ubyte").write_bytes(idx(np.arange(n, dtype=np.uint8) % 10))
    target = data.load("fashion-mnist-split", "target", data_dir=str(tmp_path))
    assert len(target) == 25 and target.classes[0] == "sandal"
    assert target.images.shape[1:] == (28, 28, 1)


def test_image_folder(image_folder: Path) -> None:
    dataset = data.load(str(image_folder))
    assert dataset.classes == ("class0", "class1")
    assert dataset.images.shape == (12, 12, 12, 3)


def test_unreadable_image(image_folder: Path) -> None:
    (image_folder / "class0" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="unreadable image .*broken.png"):
        data.load(str(image_folder))


def test_one_class_and_empty_datasets(tmp_path: Path, image_folder: Path) -> None:
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        data.load(str(tmp_path / "empty"))
    for extra in (image_folder / "class1").iterdir():
        extra.unlink()
    (image_folder / "class1").rmdir()
    with pytest.raises(DataError, match="1 class"):
        data.load(str(image_folder))


def test_parquet_like_hugging_face_export(tmp_path: Path, image_folder: Path) -> None:
    files = sorted(image_folder.rglob("*.png"))
    image = pa.array([{"bytes": f.read_bytes(), "path": f.name} for f in files])
    table = pa.table({"image": image, "label": [f.parent.name for f in files]})
    pq.write_table(table, tmp_path / "train.parquet")
    dataset = data.load(str(tmp_path / "train.parquet"))
    assert dataset.classes == ("class0", "class1")
    assert len(dataset) == 12


def test_corrupt_parquet(tmp_path: Path) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(DataError, match="cannot be read"):
        data.load(str(tmp_path / "bad.parquet"))


def test_unknown_dataset() -> None:
    with pytest.raises(DataError, match="neither a built-in"):
        data.load("imagenet-22k")


def test_model_input_matches_channels_and_size() -> None:
    digits = data.load("digits")
    x = data.to_model_input(digits, in_chans=3, size=16)
    assert x.shape == (len(digits), 3, 16, 16) and x.dtype.is_floating_point is False
    assert (x[:, 0] == x[:, 2]).all()
