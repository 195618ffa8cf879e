"""The guard's upload limit on the volume PUT (server/guard.py): a session whose declared volume is within
every limit still gets no body beyond max_upload_mb, refused as it arrives, never read whole first."""

import json
import socket

import httpx
import numpy as np
from fake_segvol import FakeSegVol
from test_server_limits import read_reply, session_spec

from SegVolSlicerLib import wire
from SegVolSlicerLib.engine import EngineHost
from SegVolSlicerLib.server import ServerSettings, create_app, serve_in_thread
from SegVolSlicerLib.testing.synthetic_ct import synthetic_ijk_to_ras

# JSON bodies up to 2 KiB, uploads up to 0.3 MiB; the body stalls after 2 s (then the answer would be a 408).
SETTINGS = ServerSettings(max_request_mb=2 / 1024, max_upload_mb=0.3, body_timeout_s=2.0)
TOO_LARGE = 3 * 2**20  # bytes: beyond the upload limit


def small_volume():
    return np.random.default_rng(0).integers(-1000, 1000, (12, 12, 16)).astype(np.int16)


def open_session(url, volume) -> str:
    spec = session_spec(volume, synthetic_ijk_to_ras())
    reply = httpx.post(f"{url}{wire.API}/sessions", json=spec, timeout=10)
    assert reply.status_code == 201, reply.text
    return reply.json()["session_id"]


def put_head(session_id: str, length_header: str) -> bytes:
    return (
        f"PUT {wire.API}/sessions/{session_id}/volume HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/octet-stream\r\n{length_header}\r\n\r\n"
    ).encode()


def head_and_problem(reply: bytes) -> tuple[dict[str, str], dict]:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}, json.loads(body)


def test_a_volume_put_beyond_the_upload_limit_is_refused_before_its_body_is_read():
    """Guards the guard no longer limiting the volume PUT (or limiting it only once the body is complete): a
    declared length beyond the limit is refused from the head alone, an undeclared one (chunked) too, before
    any of its body is read, and a body that stalls within the limit times out. And a frame within the upload
    limit but beyond the JSON limit is taken: the volume PUT has its own limit."""
    volume = small_volume()
    frame = wire.pack_volume(volume)
    assert SETTINGS.max_request_bytes < len(frame) < SETTINGS.max_upload_bytes < TOO_LARGE  # the premise
    app = create_app(EngineHost(model=FakeSegVol()), SETTINGS)
    with serve_in_thread(app) as url:
        port = int(url.rsplit(":", 1)[1])
        session_id = open_session(url, volume)

        with socket.create_connection(("127.0.0.1", port), 10) as sock:
            sock.sendall(put_head(session_id, f"Content-Length: {TOO_LARGE}"))  # the head, no body at all
            reply = read_reply(sock)
        assert reply.startswith(b"HTTP/1.1 413"), reply[:300]
        headers, problem = head_and_problem(reply)
        assert headers["content-type"] == "application/json" and problem["code"] == "request-too-large"
        assert problem["detail"].startswith("request of 3.0 MB: this server takes at most 0.3 MB"), problem

        with socket.create_connection(("127.0.0.1", port), 10) as sock:  # no declared length: refused at once
            sock.sendall(put_head(session_id, "Transfer-Encoding: chunked"))
            chunk = b"x" * 4096
            for _ in range(SETTINGS.max_upload_bytes // len(chunk) + 8):  # never the last (empty) chunk
                try:
                    sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                except OSError:  # the server answered and closed while we were still sending
                    break
            reply = read_reply(sock)
        assert reply.startswith(b"HTTP/1.1 411"), reply[:300]
        headers, problem = head_and_problem(reply)
        assert problem["code"] == "length-required"
        assert headers.get("connection") == "close"  # the body is not read: the connection cannot go on

        with socket.create_connection(("127.0.0.1", port), 10) as sock:  # within the limit, then a stall
            sock.sendall(put_head(session_id, f"Content-Length: {len(frame)}") + b"xxxx")
            reply = read_reply(sock)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:300]
        headers, problem = head_and_problem(reply)
        assert problem == {"detail": "the request body stalled: send it again", "code": "request-timeout"}
        assert headers["content-type"] == "application/json" and headers.get("connection") == "close"

        session_id = open_session(url, volume)  # the stalled upload closed its session (an interrupted upload)
        taken = httpx.put(
            f"{url}{wire.API}/sessions/{session_id}/volume",
            content=frame,
            headers={"Content-Type": "application/octet-stream"},
            timeout=10,
        )
        assert taken.status_code == 200 and taken.json() == {"uploaded": True}, taken.text
