"""Serving the app: the listening socket, who may listen where, and uvicorn's connection limits (a head
deadline per connection, keep-alive, a concurrency limit)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import json
import os
import socket
import threading
import time
from collections.abc import Iterator

from ..errors import InputError
from ..files import file_sha256
from .settings import ServerSettings, check_api_key

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
KEEP_ALIVE_S = 5.0  # an idle keep-alive connection is closed after this


def listen(host: str, port: int) -> socket.socket:
    """The listening socket for uvicorn. TCP_NODELAY, inherited by every connection: uvicorn writes a
    response's head and body separately, and without it the body waits for the client's delayed ACK (40 ms
    a request on Linux)."""
    listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return listener


def check_bind(host: str, api_key: str | None) -> None:
    """Only loopback without an API key: anyone who reaches the port could otherwise use the GPU and read
    what others upload; a key must be one a client can send."""
    check_api_key(api_key)
    if api_key is None and host not in LOOPBACK_HOSTS:
        raise InputError(
            f"refusing to serve on {host} without an API key: give --api-key-file FILE (or set "
            "SEGVOL_API_KEY), or serve on 127.0.0.1"
        )


def uvicorn_config(app, settings: ServerSettings, **options):
    """uvicorn's Config for the app: heads limited in size and time, per peer and in all (HeadLimitProtocol),
    at most settings.max_connections connections and requests at once. The guard logs the requests (without
    ids) in uvicorn's format, in place of uvicorn's access log (which has them)."""
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["loggers"]["segvol.server"] = {"handlers": ["default"], "level": "INFO"}
    return uvicorn.Config(
        app,
        http=options.pop("http", None) or head_limit_protocol(settings),  # a benchmark may name uvicorn's own
        timeout_keep_alive=min(KEEP_ALIVE_S, settings.header_timeout_s),
        limit_concurrency=settings.max_connections,
        h11_max_incomplete_event_size=settings.max_head_bytes,  # h11's own head limit, when it is the parser
        access_log=False,
        log_config=log_config,
        **options,
    )


def head_limit_protocol(settings: ServerSettings) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools when installed, else h11) with the request head bounded before
    anything is routed or the key is looked at: a connection must send a complete head within
    settings.header_timeout_s of opening or of its last response (uvicorn's own keep-alive timer restarts on
    every byte, so a head trickled, or nothing at all, would hold the connection forever); a head growing past
    settings.max_head_bytes is answered 431 and the connection closed (httptools keeps any head whole in
    memory; h11 has uvicorn's h11_max_incomplete_event_size); at most settings.max_pending_per_peer
    connections of one address may be waiting for their head (more are closed at once), so idle sockets of one
    peer cannot take the --max-connections of everyone."""
    try:  # uvicorn's choice: httptools when installed, else h11
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base
    pending: collections.Counter[str] = collections.Counter()  # per peer address, of this server
    seconds, limit, per_peer = settings.header_timeout_s, settings.max_head_bytes, settings.max_pending_per_peer
    counts_head = hasattr(Base, "on_headers_complete")  # httptools' callbacks (h11 limits heads itself)

    class HeadLimitProtocol(Base):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.peer = (self.client or ("?", 0))[0]
            self.head_bytes, self.fresh, self.head_deadline = 0, False, None
            if pending[self.peer] >= per_peer:
                transport.abort()  # closes without a word: nothing was asked
                return
            self.fresh = True  # no head yet: counted against its peer
            pending[self.peer] += 1
            self.await_head()

        def await_head(self) -> None:
            self.awaiting_head, self.head_bytes = True, 0
            if self.head_deadline is not None:
                self.head_deadline.cancel()
            self.head_deadline = self.loop.call_later(seconds, self.head_deadline_passed)

        def head_arrived(self) -> None:
            self.awaiting_head = False
            if self.fresh:
                self.fresh = False
                pending[self.peer] -= 1
                if pending[self.peer] <= 0:
                    del pending[self.peer]

        def data_received(self, data: bytes) -> None:
            if self.awaiting_head:
                self.head_bytes += len(data)
            super().data_received(data)
            if counts_head and self.awaiting_head and self.head_bytes > limit and not self.transport.is_closing():
                self.refuse_head()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if not self.awaiting_head:  # a pipelined request's head: bounded as well
                self.awaiting_head, self.head_bytes = True, 0

        def on_headers_complete(self) -> None:
            self.head_arrived()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self.await_head()

        def connection_lost(self, exc) -> None:
            if self.head_deadline is not None:
                self.head_deadline.cancel()
            self.head_arrived()
            super().connection_lost(exc)

        def head_deadline_passed(self) -> None:
            in_progress = self.cycle is not None and not self.cycle.response_complete
            if not in_progress and not self.transport.is_closing():
                self.transport.close()

        def refuse_head(self) -> None:
            body = json.dumps(
                {
                    "detail": f"request head over {limit // 1024} KiB: send shorter headers and URL",
                    "code": "head-too-large",
                }
            ).encode()
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                + body
            )
            self.transport.close()

    if not counts_head:  # h11: its parser has no such callbacks; a head ends when a request cycle starts
        del HeadLimitProtocol.on_message_begin, HeadLimitProtocol.on_headers_complete

        def handle_events(self) -> None:
            Base.handle_events(self)
            if self.cycle is not None and not self.cycle.response_complete:
                self.head_arrived()

        HeadLimitProtocol.handle_events = handle_events
    return HeadLimitProtocol


@contextlib.contextmanager
def serve_in_thread(app, settings: ServerSettings | None = None, **options) -> Iterator[str]:
    """uvicorn with the server's limits on a free port of 127.0.0.1, in a thread, for tests and benchmarks:
    yields its URL; always shut down."""
    import uvicorn

    settings = settings or app.state.server.settings
    listener = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn_config(app, settings, **{"log_level": "warning", **options}))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        listener.close()


def weights_name(weights: str | None) -> str:
    """The weights' name without the folders they lie in (the hub repository for the default weights)."""
    if weights is None:
        return "BAAI/SegVol"
    return weights.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def weights_identity(weights: str | None, weights_file: str | os.PathLike) -> dict:
    """What /info says about the weights (`weights`: as the server was given them, None for the hub's):
    their name and the file's sha256, never its path."""
    return {"name": weights_name(weights), "sha256": file_sha256(weights_file)}
