"""Every filesystem tlsearch reads or writes: local paths, NFS mounts, ``s3://`` and ``gs://``, through pyarrow.fs.

Results, Ray's state and checkpoints, exported weights and reports all go through these functions, so whatever
works for one location works for all: a URI (``s3://bucket/dir``, ``gs://bucket/dir``, any scheme
``pyarrow.fs.FileSystem.from_uri`` knows) or a plain path. Writes are atomic: on a local or NFS path a
temporary file beside the target is renamed over it; on object stores a single PUT is already all-or-nothing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tlsearch.errors import ResultsError

REMOTE_SCHEMES = ("s3", "gs", "gcs")


def scheme(uri: str | Path) -> str:
    """The URI's scheme in lower case, "" for a plain path ("C:\\..." is a drive, not a scheme)."""
    found = urlsplit(str(uri)).scheme.lower()
    return "" if len(found) <= 1 else found


def is_local(uri: str | Path) -> bool:
    """A plain path or ``file://``: something os.rename and os.fsync work on."""
    return scheme(uri) in ("", "file")


def is_remote(uri: str | Path) -> bool:
    """An object store (s3://, gs://) whose paths mean the same thing on every node."""
    return scheme(uri) in REMOTE_SCHEMES


def normalize(uri: str | Path) -> str:
    """A plain path made absolute (``~`` expanded); a URI kept as is, ``gcs://`` spelled ``gs://``."""
    if is_local(uri):
        text = str(uri)
        path = urlsplit(text).path if scheme(text) == "file" else text
        return str(Path(path).expanduser().resolve())
    text = str(uri)
    return "gs" + text[3:] if scheme(text) == "gcs" else text


def join(uri: str | Path, *parts: str) -> str:
    """``uri/part/...`` for paths and URIs alike (never ``os.path.join``, which breaks ``s3://``).

    A URI's query (``s3://bucket/dir?endpoint_override=host:port``) stays at the end.
    """
    text, _, query = str(uri).partition("?") if not is_local(uri) else (str(uri), "", "")
    out = text.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return f"{out}?{query}" if query else out


def child(base: str | Path, path: str) -> str:
    """A path that pyarrow listed inside ``base``'s filesystem, as a URI that opens on that filesystem again."""
    if is_local(base):
        return path
    text, _, query = str(base).partition("?")
    return f"{scheme(text)}://{path.lstrip('/')}" + (f"?{query}" if query else "")


def filesystem(uri: str | Path) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a plain path or a URI; one clear line when it cannot be opened."""
    target = normalize(uri)
    if is_local(target):
        return pafs.LocalFileSystem(), target
    try:
        return pafs.FileSystem.from_uri(target)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise ResultsError(f"storage {uri}: pyarrow cannot open it ({one_line(exc)}); valid: a path, "
                           "s3://BUCKET/DIR or gs://BUCKET/DIR") from None


def info(uri: str | Path) -> pafs.FileInfo:
    fs, path = filesystem(uri)
    return fs.get_file_info(path)


def is_file(uri: str | Path) -> bool:
    return info(uri).type == pafs.FileType.File


def is_dir(uri: str | Path) -> bool:
    return info(uri).type == pafs.FileType.Directory


def exists(uri: str | Path) -> bool:
    return info(uri).type != pafs.FileType.NotFound


def list_files(uri: str | Path, recursive: bool = True) -> list[pafs.FileInfo]:
    """Every file below ``uri`` (sorted by path); an empty list where there is nothing."""
    fs, path = filesystem(uri)
    found = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=recursive))
    return sorted((i for i in found if i.type == pafs.FileType.File), key=lambda i: i.path)


def list_dirs(uri: str | Path) -> list[str]:
    """The names of the folders directly below ``uri``."""
    fs, path = filesystem(uri)
    found = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
    return sorted(i.base_name for i in found if i.type == pafs.FileType.Directory)


def read_bytes(uri: str | Path) -> bytes | None:
    """The file's bytes, or None when there is no such file."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return bytes(stream.read())


def read_text(uri: str | Path) -> str | None:
    data = read_bytes(uri)
    return None if data is None else data.decode()


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary local path beside ``path``; it replaces ``path`` only if the block succeeds.

    A reader never sees a partial file under the final name: a crash leaves at most a hidden ``.tmp`` file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def writing(uri: str | Path) -> Iterator[Path]:
    """Yield a local file to write; it becomes ``uri`` atomically when the block succeeds (local or remote)."""
    target = normalize(uri)
    try:
        if is_local(target):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            with replacing(target) as tmp:
                yield tmp
            return
        fs, path = filesystem(target)
        local = Path(os.environ.get("TMPDIR", "/tmp")) / f"tlsearch-{uuid.uuid4().hex}-{Path(path).name}"
        try:
            yield local
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        finally:
            local.unlink(missing_ok=True)
    except OSError as exc:
        raise ResultsError(f"cannot write {uri}: {exc.strerror or one_line(exc)}") from None


def write_bytes(uri: str | Path, data: bytes) -> str:
    with writing(uri) as tmp:
        tmp.write_bytes(data)
    return normalize(uri)


def write_text(uri: str | Path, text: str) -> str:
    return write_bytes(uri, text.encode())


def write_table(table: pa.Table, uri: str | Path) -> str:
    """Write ``table`` as Parquet so no reader ever sees a partial file; the file is read back and checked."""
    with writing(uri) as tmp:
        pq.write_table(table, str(tmp))
        written = pq.read_metadata(tmp)
        if written.num_rows != table.num_rows or pq.read_schema(tmp).names != table.schema.names:
            raise ResultsError(f"{uri}: the written file does not read back as written")
    return normalize(uri)


def copy_file(source: str | Path, target: str | Path) -> str:
    """Copy one file between any two locations (checkpoint to export, local to bucket)."""
    src_fs, src = filesystem(source)
    with writing(target) as tmp:
        pafs.copy_files(src, str(tmp), source_filesystem=src_fs, destination_filesystem=pafs.LocalFileSystem())
    return normalize(target)


def upload_dir(local: str | Path, uri: str | Path) -> None:
    """Copy a local folder's files under ``uri``."""
    fs, base = filesystem(uri)
    try:
        fs.create_dir(base, recursive=True)
        pafs.copy_files(str(local), base, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    except OSError as exc:
        raise ResultsError(f"cannot copy {local} to {uri}: {one_line(exc)}") from None


def delete_dir(uri: str | Path) -> None:
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def check_writable(uri: str | Path) -> None:
    """Refuse, before anything is written, a local results location that cannot be written.

    Object stores are not probed (that would write); their credentials are checked by the first write.
    """
    if not is_local(uri):
        return  # opening an object store may ask the network (its region): that is the first write's job
    target = Path(normalize(uri))
    probe = target
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ResultsError(f"results directory {target} is not writable")


def one_line(exc: Any) -> str:
    """The first non-blank line of an exception's message (pyarrow and DuckDB errors run over several)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__
