"""A real S3 API on 127.0.0.1 for the object-storage tests: moto's server, started by the test.

No network and nobody's credentials: the server listens on a free local port, and the tests
that use it get fake keys and `AWS_ENDPOINT_URL` in their own environment only (monkeypatched,
so subprocesses they start inherit them and every other test never sees them).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest

FAKE_ENVIRONMENT = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1"}
UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_CONFIG_FILE",
         "AWS_SHARED_CREDENTIALS_FILE")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """http://127.0.0.1:PORT of a moto S3 server running for the whole session."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def use_endpoint(patch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Fake credentials and the local endpoint, in this test's environment only."""
    for name in UNSET:
        patch.delenv(name, raising=False)
    for name, value in FAKE_ENVIRONMENT.items():
        patch.setenv(name, value)
    patch.setenv("AWS_ENDPOINT_URL", endpoint)
    patch.setenv("AWS_CONFIG_FILE", "/dev/null")  # no profile of the machine's user
    patch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """s3://<a new bucket> on the local server, with this test's environment pointed at it."""
    import s3fs

    use_endpoint(monkeypatch, s3_endpoint)
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
    return f"s3://{name}"
