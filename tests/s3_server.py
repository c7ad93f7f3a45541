"""A real S3-protocol server on loopback (moto's server mode) for the S3 tests, and the AWS environment.

Credentials are fake and reach batchml only through the standard AWS environment chain, never through its
config. `AWS_ENDPOINT_URL` points at a closed loopback port: a client that ignored the configured
`endpoint_url` fails fast on loopback instead of reaching the internet.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FAKE_KEY_ID = "AKIABATCHMLTESTKEY01"
FAKE_SECRET = "batchml-fake-secret-0d1b8f0c6f"
#: Nothing listens here (the discard port): a request that ignores the configured endpoint fails locally.
GUARD_ENDPOINT = "http://127.0.0.1:9"


def aws_environment() -> dict[str, str]:
    """The environment variables the S3 tests run under (fake credentials, loopback-only endpoint)."""
    return {
        "AWS_ACCESS_KEY_ID": FAKE_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": GUARD_ENDPOINT,
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_MAX_ATTEMPTS": "2",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


#: Variables that would point the AWS chain somewhere else; removed while the tests run.
AWS_UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3")


def s3_toml(root: str, endpoint: str, source: Path | str) -> str:
    """The loans project config with its storage on S3; only the endpoint is configured, no credentials."""
    from tests.conftest import PROJECT_TOML

    storage = f'root = "{root}"\noptions = {{ endpoint_url = "{endpoint}" }}'
    return PROJECT_TOML.format(source=source).replace('root = "store"', storage)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class MotoS3:
    """A running moto S3 server."""

    endpoint: str

    def new_bucket(self) -> str:
        """Create a fresh, validly named bucket and return its name."""
        import boto3

        name = f"batchml-{uuid.uuid4().hex[:12]}"
        client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=name)
        client.close()
        return name


@contextlib.contextmanager
def moto_s3() -> Iterator[MotoS3]:
    """Run moto's threaded server on 127.0.0.1 for the duration of the block."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield MotoS3(endpoint=f"http://127.0.0.1:{port}")
    finally:
        server.stop()
