"""Inputs and outputs at any fsspec URL: `s3://`, `gs://`, `hf://datasets/...`, `memory://` and the like.

`read_rows` reads a remote file or a remote "folder" (a prefix, listed here) through these helpers; `upload`
copies a local file to a URL. `hf:NAME` (one colon) is not a URL: it stays a Hugging Face dataset read with
`datasets`; `hf://datasets/OWNER/NAME/...` is a path in the Hub's file system (huggingface_hub's HfFileSystem).

Credentials and endpoints come from the environment, as fsspec, s3fs and botocore read them:

- S3: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_PROFILE`, `AWS_DEFAULT_REGION`,
  or `FSSPEC_S3_ANON=true` for a public bucket. For an S3-compatible store (MinIO, Ceph, R2, a local test
  server) set its endpoint in `FSSPEC_S3_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`, or `AWS_ENDPOINT_URL`), e.g.
  `FSSPEC_S3_ENDPOINT_URL=http://127.0.0.1:9000`; the endpoint is read when a path is opened, not at import.
- any protocol: fsspec's own `FSSPEC_<PROTOCOL>_<OPTION>` variables (set before the process starts);
  `gs://` needs gcsfs installed, `hf://` a Hub token (`HF_TOKEN`) for private repositories.

Every failure to reach or read a remote input is an `InputError` with the URL in its message (a missing object
says "input not found"); a failed upload is a `RemoteError`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

from fineinstructions.errors import FineInstructionsError
from fineinstructions.io.read_stats import InputError

ENDPOINT_VARIABLES = ("FSSPEC_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_LOCAL_PROTOCOLS = {"file", "local"}
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+)(?:::[A-Za-z][A-Za-z0-9+.-]+)*://")  # s3://, simplecache::s3://


class RemoteError(FineInstructionsError):
    """A remote output that cannot be written (unreachable store, no permission, missing local file)."""


@dataclass(frozen=True)
class RemoteFile:
    """One file under a remote prefix: its full URL, its path below the prefix and its size in bytes."""

    url: str
    rel: str
    size: int


def is_remote(path: str) -> bool:
    """Whether `path` is a URL with a protocol other than the local one (`s3://b/k`, `hf://datasets/o/n`).

    A plain path, `-`, `hf:NAME` (a Hugging Face dataset name) and `file://...` are not remote.
    """
    protocol = _protocol(path)
    return protocol is not None and protocol not in _LOCAL_PROTOCOLS


def _protocol(path: str) -> str | None:
    """The (first) protocol of a URL, lower-cased, or None for a plain path."""
    match = _URL.match(path)
    return match.group(1).lower() if match else None


def storage_options(protocol: str) -> dict[str, Any]:
    """Options for `protocol`'s file system read from the environment now (an S3 endpoint); fsspec's own
    `FSSPEC_*` configuration and the credentials botocore finds apply besides."""
    if protocol in ("s3", "s3a"):
        endpoint = next((os.environ[v] for v in ENDPOINT_VARIABLES if os.environ.get(v)), None)
        if endpoint:
            return {"endpoint_url": endpoint}
    return {}


def filesystem(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec file system for `path` and the path inside it (e.g. `bucket/key` for `s3://bucket/key`).

    Raises `InputError` for an unknown protocol or one whose package is not installed (e.g. gcsfs for gs://).
    """
    protocol = _protocol(path) or "file"
    try:
        fs, inner = fsspec.core.url_to_fs(path, **storage_options(protocol))
    except ImportError as err:
        raise InputError(f"cannot use {path}: the {protocol}:// file system is not installed ({err})") from err
    except ValueError as err:  # fsspec: "Protocol not known"
        raise InputError(f"cannot use {path}: {err}") from err
    return fs, inner


@contextmanager
def remote_errors(url: str) -> Iterator[None]:
    """Turn what a file system raises while reading `url` (botocore, aiohttp, OSError...) into `InputError`."""
    try:
        yield
    except InputError:
        raise
    except FileNotFoundError as err:
        raise InputError(f"input not found: {url}") from err
    except PermissionError as err:
        raise InputError(f"cannot read {url}: permission denied ({err})") from err
    except Exception as err:  # each store's client raises its own types (credentials, network, throttling)
        raise InputError(f"cannot read {url}: {type(err).__name__}: {err}") from err


def info(url: str) -> tuple[fsspec.AbstractFileSystem, str, str, int]:
    """(file system, path in it, "file" or "directory", size) of `url`; `InputError` when it does not exist."""
    fs, inner = filesystem(url)
    with remote_errors(url):
        fs.invalidate_cache(inner)  # files may have been written since this file system object listed them
        found = fs.info(inner)
    kind = "directory" if found.get("type") == "directory" else "file"
    return fs, inner, kind, int(found.get("size") or 0)


def list_entries(url: str) -> list[RemoteFile]:
    """Every file below the prefix `url`, ordered as a local folder walk orders them (by path component)."""
    fs, inner = filesystem(url)
    root = inner.rstrip("/")
    with remote_errors(url):
        fs.invalidate_cache(inner)
        found = fs.find(inner, withdirs=False, detail=True)
    files = []
    for path, details in found.items():
        if details.get("type") == "directory" or not path.startswith(root + "/"):
            continue
        files.append(RemoteFile(fs.unstrip_protocol(path), path[len(root) + 1:], int(details.get("size") or 0)))
    return sorted(files, key=lambda f: f.rel.split("/"))


def list_files(url: str) -> list[str]:
    """The URLs of every file below the prefix `url`, in walk order (see `list_entries`)."""
    return [f.url for f in list_entries(url)]


def upload(local: Path, url: str) -> None:
    """Copy the local file `local` to `url` (an object store writes it whole or not at all).

    Raises `RemoteError` when it cannot be written."""
    try:
        fs, inner = filesystem(url)
    except InputError as err:
        raise RemoteError(str(err)) from err
    try:
        if (_protocol(url) or "file") in _LOCAL_PROTOCOLS and "/" in inner.rstrip("/"):
            fs.makedirs(inner.rstrip("/").rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(local), inner)
    except Exception as err:  # each store's client raises its own types
        raise RemoteError(f"cannot upload {local} to {url}: {type(err).__name__}: {err}") from err
