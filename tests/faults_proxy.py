"""A fault-injecting HTTP proxy on 127.0.0.1 in front of an S3 server (moto) for reliability tests.

Clients use the proxy's URL as their S3 endpoint. Normally it forwards every request unchanged; `inject()` makes it
answer matching requests with 500 / 503 (S3-style XML error bodies, which SDKs retry), 403 AccessDenied (a
permission revoked) or 404 NoSuchKey (the object deleted under the reader), which are not retried, drop the
connection before answering, or cut the response body short, for the next N matching requests or for a stretch
of seconds. `every=k` fails only every k-th matching request: each SDK retry (backoff doubling from about 1 s)
then costs one short wait, so a long stretch of faults stays cheap in test time.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODES = ("500", "503", "403", "404", "drop", "truncate")
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


@dataclass
class Fault:
    mode: str  # one of MODES
    methods: tuple[str, ...] = ()  # () -> any method
    path: str = ""  # regex searched in the request path ('' -> any)
    count: int | None = None  # matching requests to fail; None -> until `until`
    until: float | None = None  # time.monotonic() deadline; None -> until count is used up
    every: int = 1  # fail every k-th matching request, pass the others
    hits: int = 0
    seen: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.methods and method not in self.methods:
            return False
        return not self.path or re.search(self.path, path) is not None

    def live(self) -> bool:
        if self.count is not None and self.hits >= self.count:
            return False
        return self.until is None or time.monotonic() < self.until


@dataclass
class ProxyStats:
    requests: int = 0
    faults: dict = field(default_factory=dict)  # mode -> count
    methods: dict = field(default_factory=dict)  # method -> count of forwarded requests


class FaultProxy:
    """`with FaultProxy(upstream_port) as proxy:` ... `proxy.url` is the endpoint to hand to clients."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.stats = ProxyStats()
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def inject(
        self,
        mode: str,
        *,
        methods: tuple[str, ...] = (),
        path: str = "",
        count: int | None = None,
        seconds: float | None = None,
        every: int = 1,
    ) -> Fault:
        """Fail matching requests (`count` of them, or for `seconds`, or both: whichever ends first);
        faults injected together act one after the other, in order."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if count is None and seconds is None:
            raise ValueError("give count or seconds")
        until = None if seconds is None else time.monotonic() + seconds
        fault = Fault(mode, tuple(methods), path, count, until, every)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def _pick(self, method: str, path: str) -> Fault | None:
        with self._lock:
            self.stats.requests += 1
            for fault in self._faults:
                if fault.live() and fault.matches(method, path):
                    fault.seen += 1
                    if fault.seen % fault.every:
                        break  # this fault's turn to let one through
                    fault.hits += 1
                    self.stats.faults[fault.mode] = self.stats.faults.get(fault.mode, 0) + 1
                    return fault
            self.stats.methods[method] = self.stats.methods.get(method, 0) + 1
        return None

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline().strip():  # trailers
                                pass
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _error(self, status: int) -> None:
                code = {500: "InternalError", 503: "SlowDown", 403: "AccessDenied", 404: "NoSuchKey"}[status]
                body = (
                    f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                    f"<Message>injected fault</Message><RequestId>fault</RequestId></Error>"
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _drop(self) -> None:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def _forward(self, method: str) -> None:
                body = self._body()
                fault = proxy._pick(method, self.path)
                if fault is not None and fault.mode in ("500", "503", "403", "404"):
                    self._error(int(fault.mode))
                    return
                if fault is not None and fault.mode == "drop":
                    self._drop()
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                if body or method in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=120)
                try:
                    conn.request(method, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in _HOP and (method == "HEAD" or k.lower() != "content-length"):
                            self.send_header(k, v)
                    if method != "HEAD":
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if fault is not None and fault.mode == "truncate" and method != "HEAD":
                        self.wfile.write(data[: len(data) // 2])
                        self.wfile.flush()
                        self._drop()
                    elif method != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            def do_GET(self):
                self._forward("GET")

            def do_HEAD(self):
                self._forward("HEAD")

            def do_PUT(self):
                self._forward("PUT")

            def do_POST(self):
                self._forward("POST")

            def do_DELETE(self):
                self._forward("DELETE")

        return Handler
