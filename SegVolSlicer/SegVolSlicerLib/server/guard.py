"""The pure ASGI layer in front of the app: the API key and the size limits are checked on the request's head,
before any of its body is read; the body is then counted as it streams (a missing or false Content-Length
gains nothing) and may not stall. It also writes the one-line access log (routes without their ids), and
turns an error that escaped the app into a 500 with a `detail` while the connection stays usable.

A refusal is sent by the guard itself; the app, if it was reading the body, sees the client disconnect and
its own answer goes nowhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import time

from .. import wire
from .settings import Problem, ServerSettings

log = logging.getLogger("segvol.server")

PUBLIC_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})
_UPLOAD_PATH = re.compile(rf"^{wire.API}/sessions/[^/]+/volume$")
_IDS = re.compile(r"/(sessions|jobs)/[^/]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def route_of(path: str) -> str:
    """The path as the log shows it: session and job ids are credentials of a kind, never logged; control
    characters (a `%0A` decoded) escaped, so that no request writes a line of the log."""
    return _CONTROL.sub(lambda c: f"\\x{ord(c.group()):02x}", _IDS.sub(r"/\1/…", path))


def bearer_token(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header; the scheme is case-insensitive (RFC 7235)."""
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class RequestGuard:
    """The ASGI middleware (FastAPI's add_middleware): inside Starlette's error layer, outside everything else."""

    def __init__(self, app, settings: ServerSettings):
        self.app, self.settings = app, settings
        # Digests compare in constant time whatever the length of the key given.
        self.key_digest = None if settings.api_key is None else hashlib.sha256(settings.api_key.encode()).digest()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, route = time.perf_counter(), route_of(scope["path"])
        exchange = _Exchange(scope, receive, send, self.body_limit(scope), self.settings)
        problem = self.refusal(scope, exchange)
        try:
            if problem is not None:  # its body, if any, is never read: the connection cannot go on
                await exchange.refuse(problem, close=exchange.has_body or problem.status == 401)
            else:
                await self.app(scope, exchange.receive, exchange.send)
        except Exception:  # the app's own handlers answer every expected error: this one is a bug
            log.exception("%s %s failed", scope["method"], route)
            await exchange.refuse(Problem(500, "internal", "the server failed on this request (see its log)"))
        finally:
            status = exchange.status or "-"
            if exchange.client_left:
                log.info("%s %s: the client disconnected before the request was complete", scope["method"], route)
            else:
                log.info("%s %s %s %.0f ms", scope["method"], route, status, (time.perf_counter() - started) * 1000)

    def body_limit(self, scope) -> int:
        if scope["method"] == "PUT" and _UPLOAD_PATH.match(scope["path"]):
            return self.settings.max_upload_bytes
        return self.settings.max_request_bytes

    def refusal(self, scope, exchange: _Exchange) -> Problem | None:
        headers = exchange.headers
        if self.key_digest is not None and scope["path"] not in PUBLIC_PATHS:
            token = bearer_token(headers.get("authorization", ""))
            given = hashlib.sha256((token or "").encode()).digest()
            if not hmac.compare_digest(given, self.key_digest) or token is None:
                return Problem(
                    401,
                    "access-refused",
                    "missing or wrong API key: give the server's key",
                    {"WWW-Authenticate": "Bearer"},
                )
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                return Problem(400, "malformed", "malformed request: Content-Length is not a number")
            if int(declared) > exchange.limit:
                return too_large(int(declared), exchange.limit)
        return None


def too_large(size: int, limit: int) -> Problem:
    return Problem(
        413,
        "request-too-large",
        f"request of {size / 2**20:.1f} MB: this server takes at most {limit / 2**20:.1f} MB "
        "(a volume upload: crop or resample the volume first)",
    )


class _Exchange:
    """One request as the app sees it through the guard: body bytes counted, pauses timed, and once the guard
    has answered, the client gone for the app."""

    def __init__(self, scope, receive, send, limit: int, settings: ServerSettings):
        self._receive, self._send, self.limit = receive, send, limit
        self.body_timeout_s = settings.body_timeout_s
        self.body_deadline = time.monotonic() + settings.body_deadline_s
        self.headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        declared = self.headers.get("content-length", "0").strip()
        self.has_body = "transfer-encoding" in self.headers or declared not in ("", "0")
        self.received, self.body_done = 0, not self.has_body
        self.status: int | None = None
        self.refused = self.client_left = self.finished = False

    async def receive(self):
        if self.refused:
            return {"type": "http.disconnect"}
        if self.body_done:  # the app listening for a disconnect: no time limit
            return await self._receive()
        left = self.body_deadline - time.monotonic()
        try:  # a pause may not last, nor the whole body (a trickle under the pause limit)
            message = await asyncio.wait_for(self._receive(), max(0.0, min(self.body_timeout_s, left)))
        except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11 on
            why = "stalled" if left > self.body_timeout_s else "took too long"
            await self.refuse(Problem(408, "request-timeout", f"the request body {why}: send it again"), close=True)
            return {"type": "http.disconnect"}
        if message["type"] == "http.disconnect":
            self.client_left = not self.finished
        elif message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.body_done = not message.get("more_body", False)
            if self.received > self.limit:
                await self.refuse(too_large(self.received, self.limit), close=True)
                return {"type": "http.disconnect"}
        return message

    async def send(self, message) -> None:
        if self.refused:
            return
        if message["type"] == "http.response.start":
            self.status = message["status"]
            if not self.body_done:  # answered before the body was read: the connection cannot carry another
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.finished = True
        await self._send(message)

    async def refuse(self, problem: Problem, close: bool = False) -> None:
        """Answers with the problem unless an answer has begun; the app's own sends are dropped from now.
        `close`: the body was read in part, so the connection cannot carry another request."""
        self.refused = True
        if self.status is not None or self.client_left:
            return
        body = json.dumps(problem.body()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(name.lower().encode(), value.encode()) for name, value in problem.headers.items()]
        if close:
            headers.append((b"connection", b"close"))
        self.status = problem.status
        await self._send({"type": "http.response.start", "status": problem.status, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})
        self.finished = True
