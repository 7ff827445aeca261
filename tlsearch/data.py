"""Datasets: built-ins, ImageFolder trees and Parquet tables, decoded once into compact uint8 arrays.

Every source becomes an :class:`ImageSet` (uint8 images N x H x W x C, int64 labels, class names, and the
split each image belongs to when the source names one). The search driver decodes and resizes every image once
(:func:`to_model_input`) and cuts three disjoint sets of indices into that one array (:func:`three_way_split`): a
training pool, a validation set (all selection) and a test set the search never sees. Each trial takes a nested,
stratified training subset of the pool by index.

Where the splits come from:

* Fashion-MNIST: the official 60,000 training and 10,000 test images (of the target classes for ``-split``).
* ``digits``: no official split; the test set is a stratified ``test_size`` share.
* ImageFolder: ``train/``, ``val/`` (or ``valid/``, ``validation/``) and ``test/`` folders, each holding class
  folders, when the root holds only such folders; otherwise the root's folders are the classes.
* Parquet: a ``split`` column (train, val, valid, validation, test), else, for a directory, file or folder names
  starting with a split name (``train-00000-of-00001.parquet``, ``test-*.parquet``, as Hugging Face exports).

What a source does not name is drawn, stratified, from its training images: the test set first, then the
validation set.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tlsearch import storage
from tlsearch.errors import DataError

if TYPE_CHECKING:
    import torch

FASHION_MNIST_CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_IDX = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
BUILTINS = ("digits", "digits-split", "fashion-mnist", "fashion-mnist-split")
ROLES = ("source", "target")
SPLITS = ("train", "val", "test")  # ImageSet.split holds an index into this tuple per image
TRAIN, VAL, TEST = range(3)
SPLIT_NAMES = {"train": TRAIN, "val": VAL, "valid": VAL, "validation": VAL, "test": TEST}
TEST_SEED = 0  # the drawn test set does not follow --seed: every search of one dataset is tested on the same images


@dataclass(frozen=True)
class ImageSet:
    """Decoded images (uint8, N x H x W x C), labels 0..K-1, the K class names and, when the source names its
    splits, each image's split (an index into :data:`SPLITS`)."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    split: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")
        if self.split is not None and len(self.split) != len(self.labels):
            raise DataError(f"{len(self.split)} split marks but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, keep: np.ndarray) -> ImageSet:
        """The images whose labels are in ``keep``, relabelled 0..len(keep)-1."""
        mask = np.isin(self.labels, keep)
        remap = {int(old): new for new, old in enumerate(keep)}
        labels = np.array([remap[int(v)] for v in self.labels[mask]], dtype=np.int64)
        split = None if self.split is None else self.split[mask]
        return ImageSet(self.images[mask], labels, tuple(self.classes[int(k)] for k in keep), split)


def describe(spec: str) -> str:
    return spec if spec in BUILTINS else f"path {spec}"


def load(spec: str, role: str = "target", data_dir: str | None = None) -> ImageSet:
    """Load a built-in name, an ImageFolder directory or a Parquet file/directory.

    ``role`` picks the half of a ``*-split`` built-in: ``source`` = classes 0-4 (to pretrain on), ``target`` =
    classes 5-9 (to search on). Other datasets are the same in both roles.
    """
    if role not in ROLES:
        raise DataError(f"role {role!r}; valid: {', '.join(ROLES)}")
    if spec in BUILTINS:
        data = _digits() if spec.startswith("digits") else _fashion_mnist(data_dir)
        if spec.endswith("-split"):
            half = np.arange(0, 5) if role == "source" else np.arange(5, 10)
            data = data.subset(half)
    else:
        check_spec(spec)
        path = Path(spec)
        data = _parquet(path) if path.is_file() or any(path.rglob("*.parquet")) else _image_folder(path)
    check(data, spec)
    return data


def check_spec(spec: str) -> None:
    """Refuse, without reading any image, a dataset that is neither a built-in nor an existing folder or file
    (a remote URI, only streamed, is looked at later: it needs the network)."""
    if storage.is_remote(spec):
        return
    path = Path(spec)
    if spec in BUILTINS or path.is_dir() or (path.is_file() and path.suffix == ".parquet"):
        return
    raise DataError(
        f"dataset {spec!r} is neither a built-in ({', '.join(BUILTINS)}) nor an existing "
        "ImageFolder directory or Parquet file"
    )


def check(data: ImageSet, spec: str) -> None:
    if len(data) == 0:
        raise DataError(f"dataset {describe(spec)} holds no images")
    present = np.unique(data.labels)
    if len(present) < 2:
        raise DataError(f"dataset {describe(spec)} has {len(present)} class(es); a classifier needs at least 2")


def _digits() -> ImageSet:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.clip(bunch.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)[..., None]
    return ImageSet(images, bunch.target.astype(np.int64), tuple(str(n) for n in bunch.target_names))


def fashion_mnist_dir(data_dir: str | None) -> Path | None:
    candidates = [data_dir] if data_dir else list(FASHION_MNIST_DIRS)
    for cand in candidates:
        if cand and all(_idx_path(Path(cand), n) for pair in _IDX.values() for n in pair):
            return Path(cand)
    return None


def _idx_path(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _fashion_mnist(data_dir: str | None) -> ImageSet:
    """Fashion-MNIST train+test from IDX files: ``data_dir``, Debian's package, or the upstream download.

    Both official splits, marked: the test images become the search's test set.
    """
    folder = fashion_mnist_dir(data_dir)
    if folder is None:
        folder = _download_fashion_mnist(Path(data_dir or Path.home() / ".cache" / "tlsearch" / "fashion-mnist"))
    images, labels, split = [], [], []
    for name, (images_stem, labels_stem) in _IDX.items():
        images.append(_read_idx(_idx_path(folder, images_stem)))
        labels.append(_read_idx(_idx_path(folder, labels_stem)))
        split.append(np.full(len(labels[-1]), SPLIT_NAMES[name], dtype=np.int8))
    return ImageSet(np.concatenate(images)[..., None], np.concatenate(labels).astype(np.int64),
                    FASHION_MNIST_CLASSES, np.concatenate(split))


def _download_fashion_mnist(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for pair in _IDX.values():
            for stem in pair:
                target = folder / f"{stem}.gz"
                if not target.is_file():
                    with urllib.request.urlopen(FASHION_MNIST_URL + target.name, timeout=30) as resp:
                        target.write_bytes(resp.read())
    except OSError as exc:
        raise DataError(
            "Fashion-MNIST not found (looked in --data-dir and /usr/share/datasets/fashion-mnist) and the "
            f"download failed ({exc}); install Debian's dataset-fashion-mnist or use --dataset digits"
        ) from None
    return folder


def _read_idx(path: Path | None) -> np.ndarray:
    if path is None:
        raise DataError("an IDX file is missing")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    _zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if dtype_code != 0x08:
        raise DataError(f"{path}: unsupported IDX element type {dtype_code:#x}; expected unsigned bytes (0x08)")
    shape = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _decode(blob: bytes, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(blob)) as opened:
            mode = "L" if opened.mode in ("1", "L", "I;16", "I", "F") else "RGB"
            arr = np.asarray(opened.convert(mode), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"unreadable image {where}: {exc}") from None
    return arr[..., None] if arr.ndim == 2 else arr


def _decode_all(sources: Sequence[bytes | Path], where: Callable[[int], str]) -> list[np.ndarray]:
    """Decode images (bytes, or files read here) in order, on a thread per core: Pillow's decoders release the
    GIL (measured on 2 cores: 1,000 JPEGs of 400x300 1.48x faster than one at a time; tiny images gain little)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> np.ndarray:
        source = sources[i]
        return _decode(source.read_bytes() if isinstance(source, Path) else source, where(i))

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(one, range(len(sources))))


def _stack(images: list[np.ndarray]) -> np.ndarray:
    """Stack decoded images, resizing odd sizes to the most common one and matching channels."""
    import torch
    import torch.nn.functional as F

    if not images:
        return np.zeros((0, 1, 1, 1), dtype=np.uint8)
    chans = max(im.shape[2] for im in images)
    sizes = [im.shape[:2] for im in images]
    common = max(set(sizes), key=sizes.count)
    out = np.empty((len(images), *common, chans), dtype=np.uint8)
    for i, im in enumerate(images):
        if im.shape[2] != chans:
            im = np.repeat(im, chans, axis=2)
        if im.shape[:2] != common:
            t = torch.from_numpy(im).permute(2, 0, 1)[None].float()
            resized = F.interpolate(t, size=common, mode="bilinear", antialias=True)[0].permute(1, 2, 0)
            im = resized.round().clamp(0, 255).byte().numpy()
        out[i] = im
    return out


def _image_folder(root: Path) -> ImageSet:
    """Class folders of images; below ``train/``, ``val/`` and ``test/`` folders when the root holds only those."""
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    named = bool(folders) and all(p.name.lower() in SPLIT_NAMES for p in folders)
    parts = [(f, SPLIT_NAMES[f.name.lower()]) for f in folders] if named else [(root, TRAIN)]
    classes = sorted({c.name for part, _ in parts for c in part.iterdir() if c.is_dir()})
    files: list[Path] = []
    labels, split = [], []
    for part, code in parts:
        for label, name in enumerate(classes):
            found = sorted((part / name).rglob("*")) if (part / name).is_dir() else []
            for file in found:
                if file.is_file() and file.suffix.lower() in IMAGE_EXTENSIONS:
                    files.append(file)
                    labels.append(label)
                    split.append(code)
    marks = np.array(split, dtype=np.int8) if named else None
    images = _decode_all(files, lambda i: str(files[i]))
    return ImageSet(_stack(images), np.array(labels, dtype=np.int64), tuple(classes), marks)


def _parquet(path: Path) -> ImageSet:
    """A table with an image column (bytes, or a struct with ``bytes`` as Hugging Face exports), a label and
    optionally a ``split`` column; in a directory, files (or folders) named ``train-*``/``test-*`` mark splits."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    try:
        dataset = pads.dataset(str(path), format="parquet")
        fragments = [(frag.path, frag.to_table(schema=dataset.schema)) for frag in dataset.get_fragments()]
        table = pa.concat_tables([t for _, t in fragments]) if fragments else dataset.schema.empty_table()
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"Parquet dataset {path}: cannot be read ({exc})") from None
    names = set(table.column_names)
    image_col = next((c for c in ("image", "img", "pixel_values") if c in names), None)
    label_col = next((c for c in ("label", "labels", "target") if c in names), None)
    if image_col is None or label_col is None:
        raise DataError(
            f"Parquet dataset {path}: needs an image column (image/img) and a label column (label/labels/target); "
            f"has {sorted(names)}"
        )
    column = table.column(image_col)
    if pa.types.is_struct(column.type):
        column = column.combine_chunks().field("bytes")
    blobs = column.to_pylist()
    images = _decode_all(blobs, lambda i: f"row {i} of {path}")
    labels, classes = class_labels(table.column(label_col).to_pylist(), f"Parquet dataset {path}: column {label_col!r}")
    split: np.ndarray | None
    if "split" in names:
        split = split_marks(table.column("split").to_pylist(), f"Parquet dataset {path}: column 'split'")
    else:
        split = _file_splits(path, [(p, t.num_rows) for p, t in fragments]) if path.is_dir() else None
    return ImageSet(_stack(images), labels, tuple(classes), split)


def class_labels(values: Sequence[Any], where: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Labels 0..K-1 and the K class names (sorted) from a label column's values."""
    if any(v is None for v in values):
        raise DataError(f"{where} has missing labels")
    classes = [str(v) for v in sorted(set(values))]
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[str(v)] for v in values], dtype=np.int64), tuple(classes)


def split_marks(values: Sequence[Any], where: str) -> np.ndarray:
    marks = [SPLIT_NAMES.get(str(v).strip().lower()) for v in values]
    bad = sorted({str(v) for v, m in zip(values, marks, strict=True) if m is None})
    if bad:
        raise DataError(f"{where} holds {', '.join(bad[:3])}; valid split names: {', '.join(SPLIT_NAMES)}")
    return np.array(marks, dtype=np.int8)


def _file_splits(root: Path, files: list[tuple[str, int]]) -> np.ndarray | None:
    """Each row's split from its file's path below ``root``: the first part named ``train``, ``test``, ... (up to a
    ``-``, ``_`` or ``.``); None when no file is named so."""
    marks = [split_of(Path(file).resolve().relative_to(root.resolve())) for file, _ in files]
    if all(m is None for m in marks):
        return None
    unnamed = [file for (file, _), m in zip(files, marks, strict=True) if m is None]
    if unnamed:
        raise DataError(f"Parquet dataset {root}: {unnamed[0]} has no split in its name while other files have; "
                        f"name every file train-*, val-* or test-*, or add a 'split' column")
    return np.concatenate([np.full(rows, m, dtype=np.int8) for (_, rows), m in zip(files, marks, strict=True)])


def split_of(relative: Path) -> int | None:
    """The split a file's path (below the dataset's root) names: its first part named train, val, test, ..."""
    for part in relative.with_suffix("").parts:
        word = part.lower().replace("_", "-").replace(".", "-").split("-")[0]
        if word in SPLIT_NAMES:
            return SPLIT_NAMES[word]
    return None


def to_model_input(data: ImageSet, in_chans: int, size: int) -> torch.Tensor:
    """uint8 N x C x size x size: channels matched to the model (gray repeated, RGB averaged), resized once."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(data.images)).permute(0, 3, 1, 2)
    if x.shape[1] != in_chans:
        x = x.float().mean(1, keepdim=True).expand(-1, in_chans, -1, -1)
    if tuple(x.shape[2:]) != (size, size):
        out = []
        for chunk in torch.split(x, 2048):
            out.append(F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True))
        x = torch.cat(out) if out else x.float()
    return x.round().clamp(0, 255).to(torch.uint8).contiguous()


@dataclass(frozen=True)
class Splits:
    """Disjoint indices into one dataset: the training pool, the validation set and the test set."""

    pool: np.ndarray
    val: np.ndarray
    test: np.ndarray


def three_way_split(data: ImageSet, val_size: int, test_size: float, seed: int) -> Splits:
    """Pool, validation and test indices: the dataset's own splits where it names them, else drawn, stratified.

    A missing test set is a stratified ``test_size`` share of the training images, drawn with :data:`TEST_SEED`
    (not ``seed``), so searches with different seeds are tested on the same images. A missing validation set is
    then drawn from what is left with ``seed``, as :func:`stratified_split` does (``val_size`` images, at most a
    fifth). Whatever remains is the pool.
    """
    return split_rows(data.labels, data.split, val_size, test_size, seed)


def split_rows(labels: np.ndarray, split: np.ndarray | None, val_size: int, test_size: float, seed: int) -> Splits:
    """:func:`three_way_split` from the labels (and split marks) alone: row ids 0..N-1, no image needed (the
    streaming path reads only the label column)."""
    marks = split if split is not None else np.full(len(labels), TRAIN, dtype=np.int8)
    train, val, test = (np.flatnonzero(marks == code) for code in (TRAIN, VAL, TEST))
    if len(test) == 0:
        test = _stratified(labels, train, test_size, np.random.default_rng(TEST_SEED))
        train = np.setdiff1d(train, test)
    if len(val) == 0:
        share = min(val_size, len(train) // 5) / max(len(train), 1)
        val = _stratified(labels, train, share, np.random.default_rng(seed))
        train = np.setdiff1d(train, val)
    return Splits(train, val, test)


def stratified_split(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train pool, validation) indices; the validation split is stratified, at most a fifth of the data."""
    everything = np.arange(len(labels))
    share = min(val_size, len(labels) // 5) / max(len(labels), 1)
    val = _stratified(labels, everything, share, np.random.default_rng(seed))
    return np.setdiff1d(everything, val), val


def _stratified(labels: np.ndarray, among: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """A ``share`` of the indices ``among``, class by class (at least one of each class with two or more)."""
    if share <= 0:
        return np.zeros(0, dtype=np.int64)
    taken = []
    for cls in np.unique(labels[among]):
        members = among[labels[among] == cls]
        take = max(1, round(share * len(members))) if len(members) > 1 else 0
        taken.append(rng.permutation(members)[:take])
    return np.sort(np.concatenate(taken)) if taken else np.zeros(0, dtype=np.int64)


def check_unseen(target: str, target_classes: Sequence[str], source: Mapping[str, Any], weights: str) -> None:
    """Refuse a target whose images the source model was trained on, when its sidecar says so.

    The sidecar's ``dataset`` (as ``tlsearch pretrain`` and an exported best model write it) names the source's
    data; the same data (one built-in with or without ``-split``, or one path) whose ``classes`` meet the target's
    means the images overlap. A sidecar naming the same data without its classes counts as all of them.
    """
    trained_on = source.get("dataset")
    if not isinstance(trained_on, str) or _identity(trained_on) != _identity(target):
        return
    seen = {str(c) for c in source.get("classes") or target_classes}
    overlap = [c for c in target_classes if c in seen]
    if not overlap:
        return
    shown = ", ".join(overlap[:3]) + (", ..." if len(overlap) > 3 else "")
    base = _identity(target)
    hint = (f"pretrain on {base}-split's source half and search {base}-split" if target in BUILTINS
            else "use weights trained on other images")
    raise DataError(
        f"weights {weights} were trained on {trained_on}, which holds the target {target}'s classes ({shown}): "
        f"its validation and test images would not be unseen; {hint}"
    )


def _identity(spec: str) -> str:
    """What data a dataset spec means: a built-in's family (``-split`` or not), else the resolved path."""
    return spec.removesuffix("-split") if spec in BUILTINS else str(Path(spec).expanduser().resolve())


def nested_fraction(labels: np.ndarray, pool: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified ``fraction`` of ``pool``; for one seed, a smaller fraction's subset is inside a larger one's."""
    if not 0 < fraction <= 1:
        raise DataError(f"data fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed + 1)
    chosen = []
    pool_labels = labels[pool]
    for cls in np.unique(pool_labels):
        members = pool[pool_labels == cls]
        order = rng.permutation(len(members))
        take = max(1, int(round(fraction * len(members))))
        chosen.append(members[order[:take]])
    return np.sort(np.concatenate(chosen))
