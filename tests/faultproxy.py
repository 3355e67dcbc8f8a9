"""A TCP proxy on 127.0.0.1 in front of the moto server that can take the store down (not a test
module): while it is down, new connections are closed at once and open ones are cut, so every
S3 request fails the way a network outage does."""

from __future__ import annotations

import contextlib
import select
import socket
import socketserver
import threading
import time
from pathlib import Path


class OutageProxy:
    """``endpoint`` forwards to ``upstream`` (host, port). The store is down while :meth:`down`
    says so: between :meth:`set_down` and :meth:`set_up`, or for ``outage_s`` seconds after the
    file ``trigger`` first appears (a Ray worker creates it to start an outage mid-run)."""

    def __init__(self, upstream: tuple[str, int], *, trigger: Path | None = None,
                 outage_s: float = 0.0) -> None:
        self.upstream = upstream
        self.trigger = trigger
        self.outage_s = outage_s
        self.refused = 0
        self._forced = False
        self._triggered_at: float | None = None
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> OutageProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def set_down(self) -> None:
        self._forced = True

    def set_up(self) -> None:
        self._forced = False

    def arm(self, trigger: Path, outage_s: float) -> None:
        with self._lock:
            self.trigger, self.outage_s, self._triggered_at = trigger, outage_s, None

    def down(self) -> bool:
        if self._forced:
            return True
        with self._lock:
            if self.trigger is None:
                return False
            if self._triggered_at is None:
                if not self.trigger.exists():
                    return False
                self._triggered_at = time.monotonic()
            return time.monotonic() - self._triggered_at < self.outage_s

    def _serve(self, client: socket.socket) -> None:
        if self.down():
            self.refused += 1
            client.close()
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            client.close()
            return
        sockets = [client, upstream]
        try:
            while True:
                readable, _, _ = select.select(sockets, [], [], 0.1)
                if self.down():
                    self.refused += 1
                    return  # cut the open connection mid-request
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (upstream if sock is client else client).sendall(data)
        except OSError:
            return
        finally:
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.close()
