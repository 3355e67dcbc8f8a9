"""Shared fixtures: a moto S3 server on 127.0.0.1 and a store factory for both backends."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from s3server import MotoS3

# AWS settings from the host that must not leak into tests.
_AWS_VARS = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL_S3",
    "AWS_RETRY_MODE",
    "AWS_MAX_ATTEMPTS",
    "AWS_REGION",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
)


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """moto's S3 server (real HTTP) on a free port of 127.0.0.1 for the whole session."""
    from s3server import MotoS3  # imported here: moto is slow to import

    server = MotoS3().start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> MotoS3:
    """Point boto3 at the moto server via AWS_ENDPOINT_URL, with dummy credentials."""
    for name in _AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in moto_s3.env().items():
        monkeypatch.setenv(name, value)
    return moto_s3


@pytest.fixture
def s3_bucket(s3_env: MotoS3) -> str:
    """A fresh, empty bucket on the moto server."""
    import boto3

    name = f"t-{uuid.uuid4().hex[:20]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def store_backend(request: pytest.FixtureRequest) -> str:
    """Parametrises a test over both backends."""
    return request.param


@pytest.fixture
def make_store(
    store_backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Callable[..., Any]:
    """``make_store(name, read_only=False, **s3_options)`` -> a store of the current backend.

    Local stores live in ``tmp_path/<name>``; S3 stores at ``s3://<fresh bucket>/<name>``
    (one bucket per test). ``s3_options`` (page_size, multipart_threshold...) apply to S3 only.
    """
    from storage.stores import open_store

    def make(name: str = "root", *, read_only: bool = False, **s3_options: Any) -> Any:
        if store_backend == "local":
            if read_only:
                (tmp_path / name).mkdir(parents=True, exist_ok=True)
            return open_store(tmp_path / name, read_only=read_only)
        bucket = request.getfixturevalue("s3_bucket")
        return open_store(f"s3://{bucket}/{name}", read_only=read_only, **s3_options)

    return make
