"""A real local HTTP receiver for the destination tests: a ThreadingHTTPServer in a thread
that records every request and answers by a plan of actions, one per request.

Actions: "ok" (200), "500", "400", "429:SECONDS" (429 with Retry-After), "sleep:SECONDS"
(answer 200 only after sleeping, i.e. time out a client with a shorter timeout), "close"
(close the connection without an answer). After the plan, `default` answers.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    at: float
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    action: str


@dataclass
class Receiver:
    """The server's state: what it was sent and how it answers next."""

    plan: list[str] = field(default_factory=list)
    default: str = "ok"
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_action(self) -> str:
        with self.lock:
            return self.plan.pop(0) if self.plan else self.default

    def answer(self, *actions: str, default: str = "ok") -> None:
        with self.lock:
            self.plan = list(actions)
            self.default = default

    @property
    def delivered(self) -> list[Received]:
        """The requests answered with a 2xx in time (what a receiver accepted)."""
        return [r for r in self.requests if r.action == "ok"]

    def events(self) -> list[dict[str, Any]]:
        return [e for r in self.delivered for e in r.body["events"]]


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            action = receiver.next_action()
            with receiver.lock:
                receiver.requests.append(
                    Received(
                        time.monotonic(), self.path, dict(self.headers), json.loads(raw), action
                    )
                )
            if action == "close":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if action.startswith("sleep:"):
                time.sleep(float(action.split(":", 1)[1]))
                self._reply(200)
                return
            if action.startswith("429:"):
                self._reply(429, {"Retry-After": action.split(":", 1)[1]})
                return
            self._reply(200 if action == "ok" else int(action))

        def _reply(self, status: int, headers: dict[str, str] | None = None) -> None:
            body = b'{"ok": true}' if status < 300 else b'{"error": "no"}'
            try:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:  # the client gave up (a timeout test)
                self.close_connection = True

    return Handler


class WebhookServer:
    """`with WebhookServer() as server:` serves on 127.0.0.1 at `server.url`."""

    def __init__(self) -> None:
        self.receiver = Receiver()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.receiver))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    def __enter__(self) -> WebhookServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def unreachable_url() -> str:
    """A URL on a local port nobody listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"
