"""A local stand-in for Slack's Web API and an incoming webhook, which the real slack-sdk is pointed at.

It records every request and answers from a script: queue `(status, headers, body)` answers per path
(`/api/chat.postMessage`, `/webhook`); unscripted requests get Slack's normal success answers.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


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

    def posted(self, path: str = "/api/chat.postMessage") -> list[Recorded]:
        return [r for r in self.requests if r.path == path]

    def default(self, path: str) -> tuple[int, dict[str, str], bytes]:
        if path == "/api/chat.postMessage":
            self.messages += 1
            body: Any = {"ok": True, "channel": "C0123", "ts": f"1700000000.{self.messages:06d}"}
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
            body = self.rfile.read(length)
            path = self.path.split("?")[0]
            slack = holder["server"]
            slack.requests.append(Recorded(path, dict(self.headers.items()), body))
            if slack.script[path]:
                status, headers, raw = slack.script[path].popleft()
                headers = {"Content-Type": "application/json", **headers}
            else:
                status, headers, raw = slack.default(path)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    slack = SlackServer(server)
    holder["server"] = slack
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return slack
