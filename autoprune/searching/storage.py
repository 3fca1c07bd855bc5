"""Run directories on a local path or on shared storage behind a pyarrow filesystem URI.

``RunDir("runs/x")``, ``RunDir("/mnt/shared/runs/x")`` and ``RunDir("s3://bucket/runs/x")`` (or ``gs://``,
``hdfs://``, ``file://``) behave the same: every file is written whole to a temporary name and then
moved into place, so a reader never sees a half-written file.
"""
from __future__ import annotations

import io
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from autoprune.errors import AutopruneError


class RunDir:
    def __init__(self, location: str | Path) -> None:
        text = str(location)
        if "://" in text:
            try:
                self.fs, self.path = pafs.FileSystem.from_uri(text)
            except (pa.ArrowInvalid, OSError) as e:
                raise AutopruneError(f"cannot open run directory '{text}': {e}") from None
            self.path = self.path.rstrip("/")
            self.uri = text.rstrip("/")
        else:
            self.fs = pafs.LocalFileSystem()
            self.path = self.uri = str(Path(text).expanduser().resolve())

    def __str__(self) -> str:
        return self.uri

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def join(self, name: str) -> str:
        return f"{self.path}/{name}" if name else self.path

    def display(self, name: str = "") -> str:
        return f"{self.uri}/{name}" if name else self.uri

    def exists(self, name: str = "") -> bool:
        return self.fs.get_file_info(self.join(name)).type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.fs.get_file_info(self.path).type == pafs.FileType.Directory

    def is_empty(self) -> bool:
        if not self.exists():
            return True
        return not self.fs.get_file_info(pafs.FileSelector(self.path, recursive=False))

    def makedirs(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write to a temporary name, then move into place."""
        self.makedirs()
        tmp = self.join(f".{name}.{uuid.uuid4().hex}.tmp")
        try:
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            self.fs.move(tmp, self.join(name))
        except BaseException:
            if self.fs.get_file_info(tmp).type != pafs.FileType.NotFound:
                self.fs.delete_file(tmp)
            raise

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open_input_stream(self.join(name)) as f:
            return f.read()

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode())

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode()

    def write_table(self, name: str, table: pa.Table) -> None:
        sink = io.BytesIO()
        pq.write_table(table, sink)
        self.write_bytes(name, sink.getvalue())

    def read_table(self, name: str) -> pa.Table:
        return pq.read_table(self.join(name), filesystem=self.fs)

    @contextmanager
    def local_path(self, name: str) -> Iterator[Path]:
        """A local path to the file ``name``: the file itself, or a temporary copy of a remote one."""
        if self.is_local:
            yield Path(self.join(name))
            return
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(name).name
            local.write_bytes(self.read_bytes(name))
            yield local


def as_run_dir(location: "str | Path | RunDir") -> RunDir:
    return location if isinstance(location, RunDir) else RunDir(location)
