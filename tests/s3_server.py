"""An S3-compatible object store on loopback for tests: moto's server, in a thread of the test process.

    with loopback_s3() as store:
        store.upload(folder, "datasets", "shapes")
        uri = store.uri("datasets", "shapes")  # s3://datasets/shapes?endpoint_override=127.0.0.1:PORT&scheme=http

Every process started while the server runs (Ray workers, `selfsup` subprocesses) finds the test
credentials in the environment; the URI carries the endpoint, as a user's URI for MinIO would.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow.fs

LOOPBACK = "127.0.0.1"
# moto accepts any credentials; these keep pyarrow from looking for real ones (files, EC2 metadata)
TEST_ENVIRONMENT = {"AWS_ACCESS_KEY_ID": "selfsup-test", "AWS_SECRET_ACCESS_KEY": "selfsup-test-secret",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@dataclass
class LoopbackS3:
    endpoint: str  # HOST:PORT

    def uri(self, bucket: str, key: str = "") -> str:
        """An s3:// URI that pyarrow (and so staging and Ray's storage) resolves to this server."""
        return f"s3://{bucket}/{key}?endpoint_override={self.endpoint}&scheme=http"

    def filesystem(self) -> pyarrow.fs.S3FileSystem:
        return pyarrow.fs.S3FileSystem(endpoint_override=self.endpoint, scheme="http", region="us-east-1",
                                       allow_bucket_creation=True)

    def create_bucket(self, bucket: str) -> None:
        self.filesystem().create_dir(bucket)

    def upload(self, folder: Path, bucket: str, key: str) -> None:
        """Copy every file of `folder` to s3://bucket/key/ (the bucket is created when missing)."""
        self.create_bucket(bucket)
        pyarrow.fs.copy_files(str(folder), f"{bucket}/{key}", source_filesystem=pyarrow.fs.LocalFileSystem(),
                              destination_filesystem=self.filesystem())

    def read_bytes(self, bucket: str, key: str) -> bytes:
        with self.filesystem().open_input_stream(f"{bucket}/{key}") as reader:
            return reader.read()

    def list_files(self, bucket: str, key: str = "") -> list[str]:
        """Keys of every object under s3://bucket/key, relative to it, sorted."""
        base = f"{bucket}/{key}".rstrip("/")
        infos = self.filesystem().get_file_info(pyarrow.fs.FileSelector(base, recursive=True))
        return sorted(info.path[len(base) + 1:] for info in infos if info.type == pyarrow.fs.FileType.File)


def unused_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


@contextmanager
def loopback_s3() -> Iterator[LoopbackS3]:
    """Start moto's S3 server on 127.0.0.1 (a free port) with test credentials in the environment."""
    from moto.server import ThreadedMotoServer

    saved = {key: os.environ.get(key) for key in TEST_ENVIRONMENT}
    os.environ.update(TEST_ENVIRONMENT)
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield LoopbackS3(f"{host}:{port}")
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
