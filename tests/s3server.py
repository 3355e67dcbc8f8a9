"""A real S3-protocol server on 127.0.0.1 for tests: moto's threaded server mode."""

from __future__ import annotations

import logging
import socket
import time
import urllib.request

from moto.server import ThreadedMotoServer

# Dummy credentials: moto accepts any. The secret is a marker that tests search error
# messages for, to prove it never leaks.
ACCESS_KEY = "AKIATESTACCESSKEY000"
SECRET_KEY = "test-secret-DO-NOT-LEAK-5f3a9c"
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoS3:
    """Start/stop moto's S3 server on a free local port; ``endpoint`` is its URL."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    def start(self) -> MotoS3:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no per-request log lines
        self._server.start()
        deadline = time.monotonic() + 10
        while True:  # wait until it answers HTTP
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        self._server.stop()

    def env(self) -> dict[str, str]:
        """Environment for boto3: endpoint, dummy credentials, no host config files."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": "/nonexistent/aws-config",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
