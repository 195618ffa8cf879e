"""The limits of one server, and the refusals (Problem) every layer of it answers with."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ..errors import InputError


def default_memory_mb() -> float:
    """Half the machine's memory: the server's voxels and engine sessions, leaving the rest to the model, the
    system and the uploads in flight. 16 GiB where the machine's memory is not known."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2 / 2**20
    except (AttributeError, ValueError, OSError):  # Windows has no sysconf
        return 16384.0


@dataclass(frozen=True)
class ServerSettings:
    """Limits of one server.

    max_upload_mb: compressed volume upload; max_request_mb: any other request body (JSON);
    max_memory_mb: bytes held for clients at once, over every session's voxels and the engines' sessions;
    upload_grace_s: a session that never received its volume ends after this; header_timeout_s: a connection
    must send a request's head within this (idle, half-sent and slow ones are closed); body_timeout_s: the
    longest pause inside a request body; body_deadline_s: the longest a whole request body may take (an upload
    included); max_connections: connections and requests at once (more get 503); max_head_bytes: a request's
    head (request line and headers), refused with 431 as soon as it grows past this; max_pending_per_peer:
    connections from one address that have not yet sent a complete head (more are closed at once);
    session_prefix: the start of every session id (`PREFIX-…`), so that a proxy routes a session to its box.
    """

    api_key: str | None = None
    max_sessions: int = 8
    idle_timeout_s: float = 600.0
    upload_grace_s: float = 60.0
    max_upload_mb: float = 2048.0
    max_request_mb: float = 8.0
    max_memory_mb: float = field(default_factory=default_memory_mb)
    max_voxels: int = 1024 * 1024 * 1024
    max_dimension: int = 4096
    max_targets: int = 64
    max_points: int = 1000
    max_text_chars: int = 500
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    body_deadline_s: float = 900.0
    max_connections: int = 256
    max_head_bytes: int = 64 * 1024
    max_pending_per_peer: int = 32
    session_prefix: str | None = None

    def __post_init__(self):
        check_api_key(self.api_key)
        if self.session_prefix is not None and not re.fullmatch(r"[a-z0-9]{1,16}", self.session_prefix):
            raise InputError(
                f"session prefix {self.session_prefix!r}: use 1 to 16 lowercase letters and digits (e.g. box1)"
            )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * 2**20)

    @property
    def max_memory_bytes(self) -> int:
        return int(self.max_memory_mb * 2**20)


def check_api_key(key: str | None) -> None:
    """A key a client can send: printable ASCII without spaces (an HTTP header carries nothing else, so any
    other key would start a server nobody can use)."""
    if key is not None and not re.fullmatch(r"[!-~]+", key):
        raise InputError(
            "the API key must be printable ASCII without spaces (HTTP headers carry nothing else): write such "
            "a key, e.g. the output of `openssl rand -hex 32`"
        )


class Problem(Exception):
    """A request the server refuses: HTTP status, a code clients act on, and a message for the user."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def body(self) -> dict:
        return {"detail": self.message, "code": self.code}
