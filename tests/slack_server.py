"""A local stand-in for Slack's Web API and an incoming webhook, which the real slack-sdk is pointed at.

It records every request and answers from a script: queue `(status, headers, body)` answers per path
(`/api/chat.postMessage`, `/webhook`); unscripted requests get Slack's normal success answers. Like
Slack, it keeps the messages it accepted (with their metadata) and answers `conversations.history` and
`conversations.list` from them. `slow(path, seconds)` makes the next request on a path answer late —
after having done its work, as Slack does when it accepts a post and the answer is lost to a timeout.
Two states a schedule can set (the soak does): `rate_limited` (the next N requests are answered 429
with `Retry-After: 1`, a rate-limit storm) and `down` (every request is read and its connection closed
without an answer: an outage).
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class SlackServer:
    server: ThreadingHTTPServer
    requests: list[Recorded] = field(default_factory=list)
    script: dict[str, deque[tuple[int, dict[str, str], bytes]]] = field(
        default_factory=lambda: defaultdict(deque)
    )
    messages: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    """Messages accepted by chat.postMessage, oldest first, as conversations.history gives them."""
    delays: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    lock: threading.Lock = field(default_factory=threading.Lock)
    rate_limited: int = 0
    down: bool = False
    refused: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Requests answered 429 (`"429"`) or dropped unanswered (`"down"`)."""

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhook"

    def answer(self, path: str, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body if body is not None else {}).encode()
        self.script[path].append((status, headers or {}, raw))

    def slow(self, path: str, seconds: float) -> None:
        """The next request on `path` is done at once and answered `seconds` later."""
        self.delays[path].append(seconds)

    def posted(self, path: str = "/api/chat.postMessage") -> list[Recorded]:
        return [r for r in self.requests if r.path == path]

    def default(
        self, path: str, request: Recorded, query: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        if path == "/api/chat.postMessage":
            self.messages += 1
            ts = f"1700000000.{self.messages:06d}"
            sent = request.json()
            self.history.append(
                {"type": "message", "ts": ts, "text": sent.get("text"), "metadata": sent.get("metadata")}
            )
            body: Any = {"ok": True, "channel": "C0123", "ts": ts}
        elif path == "/api/conversations.history":
            oldest = float(query.get("oldest") or 0)
            with_metadata = query.get("include_all_metadata") in ("1", "true", "True")
            found = [
                {k: v for k, v in m.items() if k != "metadata" or with_metadata}
                for m in reversed(self.history)
                if float(m["ts"]) >= oldest
            ]
            body = {"ok": True, "messages": found, "has_more": False}
        elif path == "/api/conversations.list":
            body = {"ok": True, "channels": [{"id": "C0123", "name": "gpu-cost"}]}
        elif path == "/api/files.getUploadURLExternal":
            body = {"ok": True, "upload_url": f"http://127.0.0.1:{self.port}/upload/F1", "file_id": "F1"}
        elif path == "/api/files.completeUploadExternal":
            body = {"ok": True, "files": [{"id": "F1", "title": "chart"}]}
        elif path.startswith("/upload/"):
            return 200, {"Content-Type": "text/plain"}, b"OK - 1234"
        elif path == "/webhook":
            return 200, {"Content-Type": "text/plain"}, b"ok"
        else:
            body = {"ok": True}
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_slack_server() -> SlackServer:
    holder: dict[str, SlackServer] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self._answer(self.rfile.read(length))

        def do_GET(self) -> None:
            self._answer(b"")

        def _answer(self, body: bytes) -> None:
            path, _, raw_query = self.path.partition("?")
            query = {k: v[-1] for k, v in parse_qs(raw_query).items()}
            if path.startswith("/api/conversations.") and body:
                query = {k: v[-1] for k, v in parse_qs(body.decode()).items()}
            slack = holder["server"]
            recorded = Recorded(path, dict(self.headers.items()), body)
            with slack.lock:
                slack.requests.append(recorded)
                if slack.down:
                    slack.refused["down"] += 1
                    self.close_connection = True
                    return  # no answer at all: the client sees the connection closed
                if slack.rate_limited > 0:
                    slack.rate_limited -= 1
                    slack.refused["429"] += 1
                    slack.script[path].appendleft(
                        (
                            429,
                            {"Retry-After": "1"},
                            json.dumps({"ok": False, "error": "ratelimited"}).encode(),
                        )
                    )
                delay = slack.delays[path].popleft() if slack.delays[path] else 0.0
                if slack.script[path]:
                    status, headers, raw = slack.script[path].popleft()
                    headers = {"Content-Type": "application/json", **headers}
                else:
                    status, headers, raw = slack.default(path, recorded, query)
            if delay:
                time.sleep(delay)
            try:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting: the work is done all the same

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    slack = SlackServer(server)
    holder["server"] = slack
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return slack
