"""``--data-loading``: which path a search takes, and, for streaming, the target's labels read once.

:func:`load_target` decodes the target in memory (:func:`tlsearch.data.load`) or scans it for streaming
(:func:`scan`): a Parquet set's label (and ``split``) column only, from its files' footers and that column, or an
ImageFolder tree's listing, with rows numbered 0..N-1 in file order. ``auto`` keeps small data in memory
(:func:`choose_loading`). Either way the search cuts its splits from the labels (:func:`tlsearch.data.split_rows`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from tlsearch import storage
from tlsearch.errors import DataError
from tlsearch.stream import StreamSource, decoded_bytes

if TYPE_CHECKING:
    import torch

    from tlsearch.data import ImageSet
    from tlsearch.spec import InputSpec

IMAGE_COLUMNS = ("image", "img", "pixel_values")
LABEL_COLUMNS = ("label", "labels", "target")
MEMORY_SHARE = 0.1  # auto streams when the decoded images exceed this share of the available memory


@dataclass(frozen=True)
class Scan:
    """What :func:`scan` read: the layout, each row's label and (when the source names it) split."""

    source: StreamSource
    labels: np.ndarray
    classes: tuple[str, ...]
    split: np.ndarray | None

    def __len__(self) -> int:
        return len(self.labels)


def choose_loading(requested: str, spec: str, rows: int, in_chans: int, size: int, available: int) -> str:
    """``memory`` or ``stream``: ``auto`` keeps the in-memory path while the decoded images stay under
    :data:`MEMORY_SHARE` of ``available`` bytes (every concurrent trial's worker holds a copy, the object store
    another); built-ins are always in memory, remote URIs always streamed."""
    from tlsearch import data as data_mod

    if spec in data_mod.BUILTINS:
        if requested == "stream":
            raise DataError(f"data loading stream: got the built-in {spec}; valid: a Parquet or ImageFolder "
                            "dataset (built-ins are small and always in memory)")
        return "memory"
    if storage.is_remote(spec):
        if requested == "memory":
            raise DataError(f"data loading memory: got the remote dataset {spec}; valid: stream or auto "
                            "(in-memory loading reads local paths)")
        return "stream"
    if requested != "auto":
        return requested
    return "memory" if decoded_bytes(rows, in_chans, size) <= MEMORY_SHARE * available else "stream"


def available_memory() -> int:
    """Memory the machine can still give (Linux: MemAvailable; elsewhere the free physical pages)."""
    try:
        with open("/proc/meminfo") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def scan(spec: str, in_chans: int, size: int) -> Scan:
    """Read labels (and splits) once: a Parquet set's label column only, or an ImageFolder tree's listing."""
    files = [i.path for i in storage.list_files(spec)] if storage.is_dir(spec) else [storage.filesystem(spec)[1]]
    uris = [storage.child(spec, f) for f in files]
    parquet = [u for u, f in zip(uris, files, strict=True) if f.endswith(".parquet")]
    if in_chans not in (1, 3):
        raise DataError(f"data loading stream: the model takes {in_chans} channels; valid: 1 or 3")
    found = _scan_parquet(spec, parquet, in_chans, size) if parquet else _scan_images(spec, in_chans, size)
    if len(found.labels) == 0 or len(found.classes) < 2:
        raise DataError(f"dataset path {spec}: {len(found.labels)} images in {len(found.classes)} class(es); "
                        "a classifier needs at least 2")
    return found


def _scan_parquet(spec: str, parquet: list[str], in_chans: int, size: int) -> Scan:
    from tlsearch import data as data_mod

    groups, labels, image_column = [], [], ""
    marks: list[np.ndarray | None] = []
    for uri in parquet:
        image_column, file_groups, table = _label_columns(uri)
        groups.append(file_groups)
        labels += table.column(0).to_pylist()
        if "split" in table.column_names:
            marks.append(data_mod.split_marks(table.column("split").to_pylist(), f"{uri}: column 'split'"))
        else:
            named = data_mod.split_of(_relative(spec, uri)) if storage.is_dir(spec) else None
            marks.append(None if named is None else np.full(table.num_rows, named, dtype=np.int8))
    ids, classes = data_mod.class_labels(labels, f"Parquet dataset {spec}: label column")
    if any(m is None for m in marks) and not all(m is None for m in marks):
        raise DataError(f"Parquet dataset {spec}: some files name their split and some do not; name every file "
                        "train-*, val-* or test-*, or add a 'split' column")
    split = None if marks[0] is None else np.concatenate([m for m in marks if m is not None])
    source = StreamSource("parquet", tuple(parquet), tuple(groups), image_column, in_chans, size)
    return Scan(source, ids, classes, split)


def _label_columns(uri: str) -> tuple[str, tuple[int, ...], Any]:
    """(image column, rows per row group, the label (and split) column) of one Parquet file: no image is read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, inner = storage.filesystem(uri)
    try:
        with fs.open_input_file(inner) as fh:
            meta = pq.ParquetFile(fh)
            names = meta.schema_arrow.names
            image_column = next((c for c in IMAGE_COLUMNS if c in names), None)
            label = next((c for c in LABEL_COLUMNS if c in names), None)
            if image_column is None or label is None:
                raise DataError(f"Parquet dataset {uri}: needs an image column ({'/'.join(IMAGE_COLUMNS)}) and a "
                                f"label column ({'/'.join(LABEL_COLUMNS)}); has {sorted(names)}")
            table = meta.read(columns=[label, "split"] if "split" in names else [label])
            groups = tuple(meta.metadata.row_group(g).num_rows for g in range(meta.num_row_groups))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"Parquet dataset {uri}: cannot be read ({exc})") from None
    return image_column, groups, table


def _scan_images(spec: str, in_chans: int, size: int) -> Scan:
    from tlsearch import data as data_mod

    folders = storage.list_dirs(spec)
    named = bool(folders) and all(f.lower() in data_mod.SPLIT_NAMES for f in folders)
    parts = [(storage.join(spec, f), data_mod.SPLIT_NAMES[f.lower()]) for f in folders] if named else [(spec, 0)]
    classes = sorted({c for part, _ in parts for c in storage.list_dirs(part)})
    files, labels, marks = [], [], []
    for part, code in parts:
        for label, name in enumerate(classes):
            for info in storage.list_files(storage.join(part, name)):
                if "." + info.extension.lower() in data_mod.IMAGE_EXTENSIONS:
                    files.append(storage.child(spec, info.path))
                    labels.append(label)
                    marks.append(code)
    source = StreamSource("images", tuple(files), (), "", in_chans, size)
    split = np.array(marks, dtype=np.int8) if named else None
    return Scan(source, np.array(labels, dtype=np.int64), tuple(classes), split)


def _relative(root: str, uri: str) -> Any:
    from pathlib import PurePosixPath

    return PurePosixPath(uri.split("?")[0][len(root.split("?")[0].rstrip("/")) + 1:])


def load_target(dataset: str, data_dir: str | None, loading: str, spec: InputSpec) -> ImageSet | Scan:
    """The target for ``--data-loading``: decoded in memory (an :class:`~tlsearch.data.ImageSet`), or scanned
    for streaming (labels only: a :class:`Scan`). ``auto`` scans first (no image read) to count the rows."""
    from tlsearch import data as data_mod

    local = dataset not in data_mod.BUILTINS and not storage.is_remote(dataset)
    scanned = scan(dataset, spec.in_chans, spec.size) if loading == "auto" and local else None
    rows = len(scanned) if scanned is not None else 0
    if choose_loading(loading, dataset, rows, spec.in_chans, spec.size, available_memory()) == "memory":
        return data_mod.load(dataset, "target", data_dir)
    return scanned if scanned is not None else scan(dataset, spec.in_chans, spec.size)


def model_images(target: ImageSet | Scan, spec: InputSpec) -> torch.Tensor:
    """What the object store shares: every image decoded at the model's input, or nothing when streamed."""
    import torch

    from tlsearch import data as data_mod

    if isinstance(target, Scan):
        return torch.zeros((0, spec.in_chans, spec.size, spec.size), dtype=torch.uint8)
    return data_mod.to_model_input(target, spec.in_chans, spec.size)


def source_of(target: ImageSet | Scan, spec: InputSpec) -> StreamSource | None:
    """The streamed target's layout at the model's final input (the weights' sidecar may change it), or None."""
    if not isinstance(target, Scan):
        return None
    return replace(target.source, in_chans=spec.in_chans, size=spec.size)
