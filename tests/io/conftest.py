"""`s3_server`: a real S3-compatible server (moto's server mode) on 127.0.0.1 for the remote-input tests."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ENV = {
    "FSSPEC_S3_ENDPOINT_URL": None,  # filled with the server's URL
    "AWS_ENDPOINT_URL": None,
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3Server:
    """A running server: its endpoint URL, a bucket on it, and helpers to put and name objects."""

    endpoint: str
    bucket: str
    fs: Any  # an s3fs file system talking to the server

    def url(self, key: str) -> str:
        """`s3://bucket/key`."""
        return f"s3://{self.bucket}/{key}"

    def prefix(self) -> str:
        """A fresh, empty prefix (`s3://bucket/<random>`) for one test."""
        return self.url(uuid.uuid4().hex[:12])

    def put(self, key_or_url: str, data: bytes | Path) -> str:
        """Write `data` (bytes or a local file's bytes) as an object; return its URL."""
        url = key_or_url if key_or_url.startswith("s3://") else self.url(key_or_url)
        self.fs.pipe_file(url, data.read_bytes() if isinstance(data, Path) else data)
        return url

    def put_folder(self, folder: Path, prefix_url: str) -> str:
        """Upload every file below the local `folder` under `prefix_url`; return `prefix_url`."""
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                self.put(f"{prefix_url}/{path.relative_to(folder).as_posix()}", path)
        return prefix_url


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        saved = {name: os.environ.get(name) for name in ENV}
        os.environ.update({name: value or endpoint for name, value in ENV.items()})
        try:
            import s3fs

            fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
            bucket = "fineinstructions-test"
            fs.mkdir(bucket)
            yield S3Server(endpoint, bucket, fs)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    finally:
        server.stop()
