"""The checkpoint store: one root URI on any pyarrow filesystem (local path, s3://, gs://, ...).

Everything that crosses stages or nodes goes through here, so a multi-node run never depends on a
node-local path. Ray Train / Tune get the same filesystem as `storage_filesystem`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from plm_ray.config import ConfigError, StoreSection


def filesystem_for(uri: str, endpoint: str = "", region: str = "") -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or URI. Credentials come only from the
    environment or instance profile: pyarrow's S3 client reads them, we never see or store them."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    if uri.startswith("s3://") and (endpoint or region):
        scheme = "http" if endpoint.startswith("http://") else "https"
        host = endpoint.split("://", 1)[-1] if endpoint else None
        fs = pafs.S3FileSystem(endpoint_override=host, region=region or None, scheme=scheme)
        return fs, uri[len("s3://") :].rstrip("/")
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow raises several types for bad schemes / credentials
        raise ConfigError(f"cannot open storage URI {uri!r}: {exc}") from exc
    return fs, path.rstrip("/")


class Store:
    """A run-aware view of the store root: `<root>/<run>/{pretrain,sweep,...}`."""

    def __init__(self, section: StoreSection):
        self.section = section
        self.fs, self.base = filesystem_for(section.root, section.endpoint, section.region)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)
        self.root_uri = self.base if self.is_local else section.root.rstrip("/")

    def check_access(self) -> None:
        """One clear error for a store that cannot be reached or read (bad credentials, no bucket)."""
        try:
            self.fs.get_file_info(self.base)
        except OSError as exc:
            hint = " (S3 credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the instance profile)"
            raise ConfigError(
                f"cannot access the store {self.root_uri}: {str(exc).splitlines()[0]}"
                + (hint if self.root_uri.startswith("s3://") else "")
            ) from exc

    def path(self, *parts: str) -> str:
        """Path inside `self.fs`."""
        return "/".join([self.base, *[p.strip("/") for p in parts if p]])

    def uri(self, *parts: str) -> str:
        """User-facing location (absolute local path or scheme://...)."""
        return "/".join([self.root_uri, *[p.strip("/") for p in parts if p]])

    def location_of(self, fs_path: str) -> str:
        """User-facing URI of a path inside `self.fs` (e.g. a Ray checkpoint's `.path`)."""
        return fs_path if self.is_local else f"{self.root_uri.split('://', 1)[0]}://{fs_path.lstrip('/')}"

    def fs_path_of(self, location: str) -> str:
        return location.split("://", 1)[1] if "://" in location else location

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def exists_at(self, location: str) -> bool:
        """Whether a local path or URI (on this store's filesystem or any other) exists."""
        fs, path = self.resolve(location)
        return fs.get_file_info(path).type != pafs.FileType.NotFound

    def resolve(self, location: str) -> tuple[pafs.FileSystem, str]:
        """(filesystem, path) for a location, reusing this store's S3 settings for its own URIs."""
        if "://" in location and location.startswith(self.root_uri):
            return self.fs, self.path(location[len(self.root_uri) :])
        return filesystem_for(location, self.section.endpoint, self.section.region)

    def read_json(self, *parts: str) -> Any:
        with self.fs.open_input_stream(self.path(*parts)) as f:
            return json.loads(f.read().decode())

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Write atomically: readers see the old file or the whole new one, never a prefix."""
        target = self.path(*parts)
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        if self.is_local:
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        else:  # object-store PUTs are atomic
            with self.fs.open_output_stream(target) as f:
                f.write(data)

    def write_json(self, obj: Any, *parts: str) -> None:
        self.write_bytes(json.dumps(obj, indent=2, sort_keys=True).encode(), *parts)

    def upload_dir(self, local_dir: str | Path, *parts: str) -> str:
        target = self.path(*parts)
        self.fs.create_dir(target, recursive=True)
        pafs.copy_files(
            str(local_dir), target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs
        )
        return self.uri(*parts)

    def download_dir(self, local_dir: str | Path, *parts: str) -> Path:
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        pafs.copy_files(
            self.path(*parts), str(local_dir), source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem()
        )
        return Path(local_dir)

    def copy_within(self, src: str, *parts: str) -> str:
        """Copy a directory given as a path inside this store's filesystem to `<root>/<parts>`."""
        target = self.path(*parts)
        self.fs.create_dir(target, recursive=True)
        pafs.copy_files(src, target, source_filesystem=self.fs, destination_filesystem=self.fs)
        return self.uri(*parts)

    def delete(self, *parts: str) -> None:
        kind = self.fs.get_file_info(self.path(*parts)).type
        if kind == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(*parts))
        elif kind == pafs.FileType.File:
            self.fs.delete_file(self.path(*parts))

    def list_dir(self, *parts: str) -> list[str]:
        if not self.exists(*parts):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(*parts)))
        return sorted(i.base_name for i in infos if not i.base_name.startswith("."))


def fetch_dir(location: str, store: Store, local_dir: str | Path) -> Path:
    """Make a checkpoint directory available locally: a local path is used as is, a URI on the
    store's filesystem (or any pyarrow URI) is copied into `local_dir`."""
    if "://" not in location:
        return Path(location).expanduser()
    fs, path = store.resolve(location)
    Path(local_dir).mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(local_dir), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return Path(local_dir)
