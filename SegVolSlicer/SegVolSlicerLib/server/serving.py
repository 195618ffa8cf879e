"""Serving the app: the listening socket, who may listen where, and uvicorn's connection limits (a head
deadline per connection, keep-alive, a concurrency limit)."""

from __future__ import annotations

import asyncio
import copy
import os
import socket

from ..errors import InputError
from ..files import file_sha256
from .settings import ServerSettings

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
    what others upload."""
    if api_key is None and host not in LOOPBACK_HOSTS:
        raise InputError(
            f"refusing to serve on {host} without an API key: give --api-key-file FILE (or set "
            "SEGVOL_API_KEY), or serve on 127.0.0.1"
        )


def uvicorn_config(app, settings: ServerSettings, **options):
    """uvicorn's Config for the app: connections that send no complete request head within
    settings.header_timeout_s are closed (uvicorn's own keep-alive timer restarts on every byte, so a client
    trickling a head, or sending nothing at all, would otherwise hold its connection forever), and at most
    settings.max_connections connections and requests at once. The guard logs the requests (without ids) in
    uvicorn's format, in place of uvicorn's access log (which has them)."""
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["loggers"]["segvol.server"] = {"handlers": ["default"], "level": "INFO"}
    return uvicorn.Config(
        app,
        http=_protocol_with_head_deadline(settings.header_timeout_s),
        timeout_keep_alive=min(KEEP_ALIVE_S, settings.header_timeout_s),
        limit_concurrency=settings.max_connections,
        access_log=False,
        log_config=log_config,
        **options,
    )


def _protocol_with_head_deadline(seconds: float) -> type[asyncio.Protocol]:
    try:  # uvicorn's choice: httptools when installed, else h11
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base

    class HeadDeadlineProtocol(Base):
        """Closes the connection when no request is in progress `seconds` after it opened or after its last
        response: a request's head must arrive whole within the deadline."""

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.head_deadline = self.loop.call_later(seconds, self.head_deadline_passed)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self.head_deadline.cancel()
            self.head_deadline = self.loop.call_later(seconds, self.head_deadline_passed)

        def connection_lost(self, exc) -> None:
            self.head_deadline.cancel()
            super().connection_lost(exc)

        def head_deadline_passed(self) -> None:
            in_progress = self.cycle is not None and not self.cycle.response_complete
            if not in_progress and not self.transport.is_closing():
                self.transport.close()

    return HeadDeadlineProtocol


def weights_name(weights: str | None) -> str:
    """The weights' name without the folders they lie in (the hub repository for the default weights)."""
    if weights is None:
        return "BAAI/SegVol"
    return weights.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def weights_identity(weights: str | None, weights_file: str | os.PathLike) -> dict:
    """What /info says about the weights (`weights`: as the server was given them, None for the hub's):
    their name and the file's sha256, never its path."""
    return {"name": weights_name(weights), "sha256": file_sha256(weights_file)}
