from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_image_folder

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


def test_three_way_split_draws_what_the_data_does_not_name() -> None:
    labels = np.repeat(np.arange(2), [400, 100])
    dataset = data.ImageSet(np.zeros((500, 1, 1, 1), dtype=np.uint8), labels, ("a", "b"))
    splits = data.three_way_split(dataset, val_size=50, test_size=0.2, seed=0)
    parts = [set(splits.pool), set(splits.val), set(splits.test)]
    assert sum(len(p) for p in parts) == 500 and set.union(*parts) == set(range(500))  # disjoint, complete
    assert np.bincount(labels[splits.test]).tolist() == [80, 20]  # a stratified 20%
    assert np.bincount(labels[splits.val]).tolist() == [40, 10]  # then val_size from what is left
    other = data.three_way_split(dataset, val_size=50, test_size=0.2, seed=1)
    assert np.array_equal(other.test, splits.test)  # one test set whatever the search's seed
    assert not np.array_equal(other.val, splits.val)


def test_three_way_split_keeps_the_splits_the_data_names() -> None:
    labels = np.tile(np.arange(2), 50)
    marks = np.repeat([data.TRAIN, data.VAL, data.TEST], [60, 20, 20]).astype(np.int8)
    dataset = data.ImageSet(np.zeros((100, 1, 1, 1), dtype=np.uint8), labels, ("a", "b"), marks)
    splits = data.three_way_split(dataset, val_size=5, test_size=0.5, seed=0)
    assert splits.val.tolist() == list(range(60, 80)) and splits.test.tolist() == list(range(80, 100))
    assert splits.pool.tolist() == list(range(60))
    no_val = data.ImageSet(dataset.images, labels, dataset.classes, np.where(marks == data.VAL, data.TRAIN, marks))
    drawn = data.three_way_split(no_val, val_size=10, test_size=0.5, seed=0)
    assert drawn.test.tolist() == list(range(80, 100)) and len(drawn.val) == 10 and drawn.val.max() < 80


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
    splits = data.three_way_split(target, val_size=5, test_size=0.2, seed=0)
    assert splits.test.tolist() == list(range(20, 25))  # the official test images of classes 5-9, all of them
    assert len(splits.val) == 5 and len(splits.pool) == 15


def test_image_folder(image_folder: Path) -> None:
    dataset = data.load(str(image_folder))
    assert dataset.classes == ("class0", "class1")
    assert dataset.images.shape == (12, 12, 12, 3)


def test_image_folder_with_split_folders(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "train", per_class=5)
    write_image_folder(tmp_path / "val", per_class=2)
    write_image_folder(tmp_path / "test", classes=3, per_class=1)  # a class only the test set has
    dataset = data.load(str(tmp_path))
    assert dataset.classes == ("class0", "class1", "class2")
    splits = data.three_way_split(dataset, val_size=100, test_size=0.5, seed=0)
    assert (len(splits.pool), len(splits.val), len(splits.test)) == (10, 4, 3)
    assert sorted(dataset.labels[splits.test].tolist()) == [0, 1, 2]
    (tmp_path / "val").rename(tmp_path / "elsewhere")  # a folder that is no split: the root holds classes
    assert data.load(str(tmp_path)).split is None


def test_a_large_folder_decodes_in_parallel_and_in_order(tmp_path: Path) -> None:
    """Decoded on several threads, each image still lands at its own row, with its own label."""
    from PIL import Image

    root = write_image_folder(tmp_path / "big", classes=2, per_class=50, size=8)
    dataset = data.load(str(root))
    files = sorted((root / "class0").glob("*.png")) + sorted((root / "class1").glob("*.png"))
    assert dataset.labels.tolist() == [0] * 50 + [1] * 50
    for row in (0, 37, 50, 99):
        assert np.array_equal(dataset.images[row], np.asarray(Image.open(files[row]).convert("RGB")))
    (root / "class1" / "zz-broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="unreadable image .*zz-broken.png"):
        data.load(str(root))


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


def _parquet_rows(image_folder: Path) -> dict[str, list]:
    files = sorted(image_folder.rglob("*.png"))
    images = [{"bytes": f.read_bytes(), "path": f.name} for f in files]
    return {"image": images, "label": [f.parent.name for f in files]}


def test_parquet_split_column(tmp_path: Path, image_folder: Path) -> None:
    rows = _parquet_rows(image_folder)
    rows["split"] = ["train", "TEST", "validation", "train", "train", "val"] * 2
    pq.write_table(pa.table(rows), tmp_path / "all.parquet")
    splits = data.three_way_split(data.load(str(tmp_path / "all.parquet")), val_size=100, test_size=0.5, seed=0)
    assert (splits.pool.tolist(), splits.val.tolist(), splits.test.tolist()) == (
        [0, 3, 4, 6, 9, 10], [2, 5, 8, 11], [1, 7])
    rows["split"][0] = "holdout"
    pq.write_table(pa.table(rows), tmp_path / "all.parquet")
    with pytest.raises(DataError, match="column 'split' holds holdout; valid split names: train, val"):
        data.load(str(tmp_path / "all.parquet"))


def test_parquet_split_files_like_hugging_face(tmp_path: Path, image_folder: Path) -> None:
    table = pa.table(_parquet_rows(image_folder))
    (tmp_path / "hf" / "data").mkdir(parents=True)
    pq.write_table(table.slice(0, 8), tmp_path / "hf" / "data" / "train-00000-of-00001.parquet")
    pq.write_table(table.slice(8), tmp_path / "hf" / "data" / "test-00000-of-00001.parquet")
    dataset = data.load(str(tmp_path / "hf"))
    assert dataset.split is not None and np.bincount(dataset.split).tolist() == [8, 0, 4]
    assert dataset.labels[dataset.split == data.TEST].tolist() == [1] * 4  # rows 8-11 are class1's
    pq.write_table(table.slice(0, 2), tmp_path / "hf" / "data" / "extra.parquet")
    with pytest.raises(DataError, match="extra.parquet has no split in its name"):
        data.load(str(tmp_path / "hf"))


def test_corrupt_parquet(tmp_path: Path) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(DataError, match="cannot be read"):
        data.load(str(tmp_path / "bad.parquet"))


def test_unknown_dataset() -> None:
    with pytest.raises(DataError, match="neither a built-in"):
        data.load("imagenet-22k")


DIGITS = tuple(str(d) for d in range(10))


@pytest.mark.parametrize(("source", "classes", "target", "refused"), [
    ("digits", DIGITS, "digits-split", True),  # the whole dataset holds the target half
    ("digits-split", DIGITS[:5], "digits-split", False),  # the source half: other classes
    ("digits-split", DIGITS[:5], "digits", True),  # the whole target holds the source half
    ("digits-split", None, "digits-split", True),  # the same data, classes not said: all of them
    ("fashion-mnist", None, "digits-split", False),  # other data
])
def test_check_unseen(source: str, classes: tuple[str, ...] | None, target: str, refused: bool) -> None:
    target_classes = DIGITS[5:] if target.endswith("-split") else DIGITS
    sidecar = {"dataset": source, **({"classes": list(classes)} if classes else {})}
    if refused:
        with pytest.raises(DataError, match=f"were trained on {source}, which holds the target {target}'s classes"):
            data.check_unseen(target, target_classes, sidecar, "w.safetensors")
    else:
        data.check_unseen(target, target_classes, sidecar, "w.safetensors")


def test_check_unseen_compares_paths(tmp_path: Path, image_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="use weights trained on other images"):
        data.check_unseen(str(image_folder), ("class0", "class1"), {"dataset": "images"}, "w.pt")
    data.check_unseen(str(image_folder), ("class0", "class1"), {"dataset": "other"}, "w.pt")


def test_model_input_matches_channels_and_size() -> None:
    digits = data.load("digits")
    x = data.to_model_input(digits, in_chans=3, size=16)
    assert x.shape == (len(digits), 3, 16, 16) and x.dtype.is_floating_point is False
    assert (x[:, 0] == x[:, 2]).all()
