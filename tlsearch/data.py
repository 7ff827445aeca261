"""Datasets: built-ins, ImageFolder trees and Parquet tables, decoded once into compact uint8 arrays.

Every source becomes an :class:`ImageSet` (uint8 images N x H x W x C, int64 labels, class names). The search
driver decodes and resizes once (:func:`to_model_input`), puts the result in Ray's object store, and each trial
takes a validation split and a nested, stratified training subset of it by index.
"""

from __future__ import annotations

import gzip
import io
import struct
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tlsearch.errors import DataError

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


@dataclass(frozen=True)
class ImageSet:
    """Decoded images (uint8, N x H x W x C), labels 0..K-1 and the K class names."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, keep: np.ndarray) -> ImageSet:
        """The images whose labels are in ``keep``, relabelled 0..len(keep)-1."""
        mask = np.isin(self.labels, keep)
        remap = {int(old): new for new, old in enumerate(keep)}
        labels = np.array([remap[int(v)] for v in self.labels[mask]], dtype=np.int64)
        return ImageSet(self.images[mask], labels, tuple(self.classes[int(k)] for k in keep))


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
        path = Path(spec)
        if path.is_dir() and not any(path.glob("*.parquet")):
            data = _image_folder(path)
        elif path.suffix == ".parquet" or path.is_dir():
            data = _parquet(path)
        else:
            raise DataError(
                f"dataset {spec!r} is neither a built-in ({', '.join(BUILTINS)}) nor an existing "
                "ImageFolder directory or Parquet file"
            )
    check(data, spec)
    return data


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
    """Fashion-MNIST train+test from IDX files: ``data_dir``, Debian's package, or the upstream download."""
    folder = fashion_mnist_dir(data_dir)
    if folder is None:
        folder = _download_fashion_mnist(Path(data_dir or Path.home() / ".cache" / "tlsearch" / "fashion-mnist"))
    parts = []
    for images_stem, labels_stem in _IDX.values():
        images = _read_idx(_idx_path(folder, images_stem))
        labels = _read_idx(_idx_path(folder, labels_stem))
        parts.append((images, labels))
    images = np.concatenate([p[0] for p in parts])[..., None]
    labels = np.concatenate([p[1] for p in parts]).astype(np.int64)
    return ImageSet(images, labels, FASHION_MNIST_CLASSES)


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


def _stack(images: list[np.ndarray]) -> np.ndarray:
    """Stack decoded images, resizing odd sizes to the most common one and matching channels."""
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
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((root / name).rglob("*")):
            if file.is_file() and file.suffix.lower() in IMAGE_EXTENSIONS:
                images.append(_decode(file.read_bytes(), str(file)))
                labels.append(label)
    return ImageSet(_stack(images), np.array(labels, dtype=np.int64), tuple(classes))


def _parquet(path: Path) -> ImageSet:
    """A table with an image column (bytes, or a struct with ``bytes`` as Hugging Face exports) and a label."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    try:
        table = pads.dataset(str(path), format="parquet").to_table()
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
    images = [_decode(b, f"row {i} of {path}") for i, b in enumerate(blobs)]
    raw_labels = table.column(label_col).to_pylist()
    if any(v is None for v in raw_labels):
        raise DataError(f"Parquet dataset {path}: column {label_col!r} has missing labels")
    classes = [str(v) for v in sorted(set(raw_labels))]
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[str(v)] for v in raw_labels], dtype=np.int64)
    return ImageSet(_stack(images), labels, tuple(classes))


def to_model_input(data: ImageSet, in_chans: int, size: int) -> torch.Tensor:
    """uint8 N x C x size x size: channels matched to the model (gray repeated, RGB averaged), resized once."""
    x = torch.from_numpy(np.ascontiguousarray(data.images)).permute(0, 3, 1, 2)
    if x.shape[1] != in_chans:
        x = x.float().mean(1, keepdim=True).expand(-1, in_chans, -1, -1)
    if tuple(x.shape[2:]) != (size, size):
        out = []
        for chunk in torch.split(x, 2048):
            out.append(F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True))
        x = torch.cat(out) if out else x.float()
    return x.round().clamp(0, 255).to(torch.uint8).contiguous()


def stratified_split(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train pool, validation) indices; the validation split is stratified, at most a fifth of the data."""
    n_val = min(val_size, len(labels) // 5)
    rng = np.random.default_rng(seed)
    val: list[np.ndarray] = []
    classes, counts = np.unique(labels, return_counts=True)
    for cls, count in zip(classes, counts, strict=True):
        idx = np.flatnonzero(labels == cls)
        take = max(1, round(n_val * count / len(labels))) if count > 1 else 0
        val.append(rng.permutation(idx)[:take])
    val_idx = np.sort(np.concatenate(val))
    pool = np.setdiff1d(np.arange(len(labels)), val_idx)
    return pool, val_idx


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
