"""A local stand-in for Google's BigQuery and Cloud Catalog REST APIs, for the real clients to talk to.

The real `google-cloud-bigquery` and `google-cloud-billing` clients (REST transport, anonymous
credentials) are pointed at `GoogleServer.url`. BigQuery: `POST .../jobs` (and `POST .../queries`)
answer a finished job; `GET .../queries/JOB_ID` answers the queued result (schema + rows) for the
next query; a dry run answers its bytes. Cloud Catalog: `GET /v1/services/ID/skus` answers queued
pages, following `pageToken`. `fail(path_part, status, message)` makes the next matching request
fail as Google does (a JSON error body). Every request is recorded.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


@dataclass
class GoogleServer:
    server: ThreadingHTTPServer
    requests: list[Request] = field(default_factory=list)
    results: deque[tuple[list[dict[str, str]], list[list[Any]]]] = field(default_factory=deque)
    """Queued query results: (schema fields, rows as lists of values)."""
    sku_pages: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Catalog pages by page token ("" for the first)."""
    failures: deque[tuple[str, int, str]] = field(default_factory=deque)
    dry_run_bytes: int = 12345
    lock: threading.Lock = field(default_factory=threading.Lock)
    _jobs: dict[str, tuple[list[dict[str, str]], list[list[Any]]]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def queue_result(self, fields: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]) -> None:
        self.results.append(
            ([{"name": n, "type": t, "mode": "NULLABLE"} for n, t in fields], [list(r) for r in rows])
        )

    def fail(self, path_part: str, status: int, message: str) -> None:
        self.failures.append((path_part, status, message))

    def queries(self) -> list[Request]:
        return [r for r in self.requests if r.method == "POST" and "/bigquery/" in r.path]


def _cell(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, date | Decimal):
        return str(value) if not isinstance(value, date) else value.isoformat()
    return str(value)


class _Handler(BaseHTTPRequestHandler):
    state: GoogleServer

    def log_message(self, format: str, *args: object) -> None:
        return

    def _send(self, status: int, body: Any) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _record(self, method: str) -> Request:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        request = Request(method, parts.path, parse_qs(parts.query), json.loads(raw) if raw else None)
        with self.state.lock:
            self.state.requests.append(request)
        return request

    def _failure(self, request: Request) -> bool:
        with self.state.lock:
            for i, (part, status, message) in enumerate(self.state.failures):
                if part in request.path:
                    del self.state.failures[i]
                    reason = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND"}.get(
                        status, "ERROR"
                    )
                    self._send(
                        status,
                        {
                            "error": {
                                "code": status,
                                "message": message,
                                "status": reason,
                                "errors": [{"message": message, "reason": reason.lower()}],
                            }
                        },
                    )
                    return True
        return False

    def do_POST(self) -> None:
        request = self._record("POST")
        if self._failure(request):
            return
        if "/bigquery/v2/projects/" in request.path:
            project = request.path.split("/projects/")[1].split("/")[0]
            body = request.body or {}
            config = body.get("configuration", {})
            job_id = (body.get("jobReference") or {}).get("jobId") or f"job{len(self.state.requests)}"
            if config.get("dryRun"):
                self._send(
                    200,
                    {
                        "jobReference": {"projectId": project, "jobId": job_id, "location": "US"},
                        "status": {"state": "DONE"},
                        "statistics": {
                            "totalBytesProcessed": str(self.state.dry_run_bytes),
                            "query": {"totalBytesProcessed": str(self.state.dry_run_bytes)},
                        },
                        "configuration": config,
                    },
                )
                return
            with self.state.lock:
                result = self.state.results.popleft() if self.state.results else ([], [])
                self.state._jobs[job_id] = result
            self._send(
                200,
                {
                    "jobReference": {"projectId": project, "jobId": job_id, "location": "US"},
                    "status": {"state": "DONE"},
                    "statistics": {"query": {"totalBytesBilled": "10485760", "totalBytesProcessed": "2048"}},
                    "configuration": config,
                },
            )
            return
        self._send(
            404, {"error": {"code": 404, "message": f"no route {request.path}", "status": "NOT_FOUND"}}
        )

    def do_GET(self) -> None:
        request = self._record("GET")
        if self._failure(request):
            return
        if "/queries/" in request.path:
            project = request.path.split("/projects/")[1].split("/")[0]
            job_id = request.path.rsplit("/", 1)[1]
            with self.state.lock:
                fields, rows = self.state._jobs.get(job_id, ([], []))
            self._send(
                200,
                {
                    "kind": "bigquery#getQueryResultsResponse",
                    "jobReference": {"projectId": project, "jobId": job_id, "location": "US"},
                    "jobComplete": True,
                    "schema": {"fields": fields},
                    "rows": [{"f": [{"v": _cell(v)} for v in row]} for row in rows],
                    "totalRows": str(len(rows)),
                },
            )
            return
        if "/jobs/" in request.path:
            project = request.path.split("/projects/")[1].split("/")[0]
            job_id = request.path.rsplit("/", 1)[1]
            self._send(
                200,
                {
                    "jobReference": {"projectId": project, "jobId": job_id, "location": "US"},
                    "status": {"state": "DONE"},
                    "statistics": {"query": {"totalBytesBilled": "10485760"}},
                },
            )
            return
        if request.path.startswith("/v1/services/") and request.path.endswith("/skus"):
            token = request.query.get("pageToken", [""])[0]
            page = self.state.sku_pages.get(token)
            if page is None:
                self._send(
                    400, {"error": {"code": 400, "message": "bad page token", "status": "INVALID_ARGUMENT"}}
                )
                return
            self._send(200, page)
            return
        self._send(
            404, {"error": {"code": 404, "message": f"no route {request.path}", "status": "NOT_FOUND"}}
        )


@contextmanager
def google_server(sku_pages: Mapping[str, dict[str, Any]] | None = None) -> Iterator[GoogleServer]:
    handler = type("Handler", (_Handler,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    state = GoogleServer(server=server, sku_pages=dict(sku_pages or {}))
    handler.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
