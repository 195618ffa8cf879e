"""`segvol serve` against an attacker on 127.0.0.1 (issue 25): heads bounded before the key, idle sockets that
cannot lock clients out, refused bodies never read, trickled bodies timed out, one upload per session, logs that
cannot be forged, geometry checked, keys that can be sent, and an OpenAPI document that says what the server
does. Raw sockets on loopback; every loop bounded."""

import json
import logging
import socket
import time

import numpy as np
import pytest
from fake_segvol import FakeSegVol
from test_server_limits import read_reply, session_spec

from SegVolSlicerLib import wire
from SegVolSlicerLib.client import SegVolClient
from SegVolSlicerLib.engine import EngineHost
from SegVolSlicerLib.errors import InputError
from SegVolSlicerLib.server import ServerSettings, check_bind, create_app, serve_in_thread
from SegVolSlicerLib.testing.synthetic_ct import make_synthetic_ct


@pytest.fixture(scope="module")
def ct():
    return make_synthetic_ct()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def server(settings: ServerSettings):
    return serve_in_thread(create_app(EngineHost(model=FakeSegVol()), settings))


def test_a_head_past_64_kib_is_refused_while_it_arrives_before_the_key():
    """The mistake: no limit on the head, before any key check (64 MB of headers cost 662 MB). The 431 comes
    while the head still arrives, without the key, and the connection closes."""
    with server(ServerSettings(api_key="right")) as url, socket.create_connection(("127.0.0.1", port_of(url)), 10) as s:
        s.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\nX-Padding: ")
        sent = 0
        try:
            for _ in range(64):  # 4 MiB at most, in 64 KiB pieces; never the head's end
                s.sendall(b"a" * 65536)
                sent += 65536
        except OSError:  # closed by the server: what it said is still to be read
            pass
        reply = read_reply(s)
    assert reply.startswith(b"HTTP/1.1 431"), reply[:200]
    assert json.loads(reply.partition(b"\r\n\r\n")[2])["code"] == "head-too-large"
    assert sent < 4 * 2**20


def test_idle_sockets_of_one_peer_do_not_lock_clients_out_of_max_connections():
    """The mistake: sockets that never send a head counted against --max-connections (70 of them kept every
    client at 503). A peer's connections without a head are capped; beyond the cap they are closed at once.
    The attacker is 127.0.0.2 (loopback too), the client 127.0.0.1."""
    settings = ServerSettings(max_connections=8, max_pending_per_peer=4, header_timeout_s=30)
    with server(settings) as url:
        peer = ("127.0.0.2", 0)
        idle = [socket.create_connection(("127.0.0.1", port_of(url)), 10, source_address=peer) for _ in range(12)]
        try:
            time.sleep(0.3)
            with SegVolClient(url) as client:
                assert client.request("GET", "/info").status_code == 200
            closed = 0
            for sock in idle[4:]:
                sock.settimeout(5)
                try:
                    closed += sock.recv(1) == b""
                except ConnectionResetError:
                    closed += 1
            assert closed == 8
        finally:
            for sock in idle:
                sock.close()


def test_a_refused_request_with_a_body_closes_the_connection_unread():
    """The mistake: after the 401 the server still read the body (1 GiB). It answers from the head and
    closes: the client cannot push much more."""
    with server(ServerSettings(api_key="right")) as url, socket.create_connection(("127.0.0.1", port_of(url)), 10) as s:
        s.sendall(
            b"PUT /v1/sessions/x/volume HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
            b"Content-Length: 1073741824\r\n\r\n"
        )
        reply = read_reply(s)
        assert reply.startswith(b"HTTP/1.1 401") and b"connection: close" in reply.partition(b"\r\n\r\n")[0].lower()
        pushed = 0
        with pytest.raises(OSError):
            for _ in range(1024):  # 1 GiB at most
                s.sendall(bytes(2**20))
                pushed += 2**20
    assert pushed < 256 * 2**20


def test_a_body_trickled_under_the_pause_limit_times_out():
    """The mistake: only pauses were timed, so a body trickled a byte at a time never ended."""
    settings = ServerSettings(body_timeout_s=1.0, body_deadline_s=1.5)
    with server(settings) as url, socket.create_connection(("127.0.0.1", port_of(url)), 10) as s:
        s.sendall(b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        s.sendall(b"Content-Length: 99\r\n\r\n")
        started = time.monotonic()
        with pytest.raises(OSError):
            for _ in range(100):  # 30 s at most
                s.sendall(b" ")
                time.sleep(0.3)
        reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 10


def test_one_upload_at_a_time_per_session_and_an_interrupted_one_closes_its_session(ct):
    """The mistakes: concurrent PUTs into one session each buffered whole outside the budget; a client that
    left mid-upload (Ctrl-C) left its session for the upload grace."""
    app = create_app(EngineHost(model=FakeSegVol()), ServerSettings())
    frame = wire.pack_volume(ct.volume)
    with serve_in_thread(app) as url, SegVolClient(url) as client:
        session_id = client.request("POST", "/v1/sessions", json=session_spec(ct.volume, ct.ijk_to_ras)).json()[
            "session_id"
        ]
        head = f"PUT /v1/sessions/{session_id}/volume HTTP/1.1\r\nHost: x\r\nContent-Length: {len(frame)}\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port_of(url)), 10) as first:
            first.sendall(head.encode() + frame[:1000])
            deadline = time.monotonic() + 10
            while not app.state.server.sessions[session_id].uploading:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            second = client.request_raw = client.http.put(
                url + f"/v1/sessions/{session_id}/volume", content=frame, headers=client.headers
            )
            assert second.status_code == 409 and second.json()["code"] == "upload-in-progress"
        deadline = time.monotonic() + 10  # the first client left: its session goes
        while session_id in app.state.server.sessions:
            assert time.monotonic() < deadline, "the interrupted upload's session is still open"
            time.sleep(0.05)


def test_control_characters_in_a_path_cannot_forge_a_log_line(caplog):
    caplog.set_level(logging.INFO)
    with server(ServerSettings()) as url, SegVolClient(url) as client:
        client.http.get(url + "/v1/x%0A2026-01-01 INFO GET /info 200%0D")
    lines = [r.getMessage() for r in caplog.records if r.name == "segvol.server"]
    assert lines and not any("\n" in line or "\r" in line for line in lines), lines
    assert any("\\x0a" in line for line in lines), lines


@pytest.mark.parametrize(
    "matrix",
    [
        np.diag([1e300, 1e300, 1e300, 1.0]),  # its determinant overflows: volume_ml was inf, sent as null
        np.diag([1.0, 1.0, 1.0, 2.0]),  # not affine
        np.diag([1e-9, 1.0, 1.0, 1.0]),  # a spacing of a picometre
        np.array([[1.0, 1.0, 0, 0], [0, 1e-9, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1]]),  # nearly collinear axes
    ],
)
def test_a_geometry_that_makes_no_sense_is_refused(ct, matrix):
    with server(ServerSettings()) as url, SegVolClient(url) as client:
        spec = {**session_spec(ct.volume, ct.ijk_to_ras), "ijk_to_ras": matrix.tolist()}
        reply = client.http.post(url + "/v1/sessions", json=spec)
    assert reply.status_code == 422 and reply.json()["code"] == "bad-geometry"


def test_api_keys_must_be_printable_ascii_at_start_up():
    """The mistake: a non-ASCII key started a server whose key no client can send."""
    for key in ("clé", "two words", "tab\tkey"):
        with pytest.raises(InputError, match="printable ASCII"):
            check_bind("0.0.0.0", key)
        with pytest.raises(InputError, match="printable ASCII"):
            ServerSettings(api_key=key)
    check_bind("0.0.0.0", "s3cret-key_!")


def test_a_reuse_proof_costs_the_same_for_any_volume():
    """The mistake: /reuse hashed the whole volume per 77-byte request. The proof covers a fixed number of
    voxels drawn by the nonce: a 16 GiB (broadcast, never allocated) volume is as quick as a small one."""
    nonce = bytes(32)
    huge = np.broadcast_to(np.zeros((), np.int16), (2048, 2048, 2048))
    started = time.process_time()
    wire.voxel_proof(nonce, huge)
    assert time.process_time() - started < 5
    small = np.arange(1000, dtype=np.int16).reshape(10, 10, 10)
    other = small.copy()
    other[5, 5, 5] += 1
    assert wire.voxel_proof(nonce, small) == wire.voxel_proof(nonce, small.copy())
    assert wire.voxel_proof(nonce, small) != wire.voxel_proof(bytes([1] * 32), small)


# --- the OpenAPI document is the contract ---


def document(api_key=None) -> dict:
    from fastapi.testclient import TestClient

    with TestClient(create_app(EngineHost(model=FakeSegVol()), ServerSettings(api_key=api_key))) as http:
        return http.get("/openapi.json").json()


@pytest.fixture(scope="module")
def openapi():
    return document("k3y")


def test_every_operation_declares_its_refusals_as_detail_and_code(openapi):
    """The mistake: 400/401/404/409/413/503 undeclared and 422 declared as FastAPI's HTTPValidationError, while
    the server answers {detail, code}; no bearer scheme. Without a key, no operation says it needs one."""
    error = openapi["components"]["schemas"]["ErrorBody"]
    assert (
        set(error["required"]) == {"detail", "code"} and "HTTPValidationError" not in openapi["components"]["schemas"]
    )
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            for status in ("400", "401", "413", "422", "503"):
                schema = responses[status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
            if "{session_id}" in path:
                assert "404" in responses, (method, path)
            assert operation.get("security") == [{"HTTPBearer": []}], (method, path)
    assert openapi["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    keyless = document()
    assert "securitySchemes" not in keyless.get("components", {})
    assert not any("401" in op["responses"] for ops in keyless["paths"].values() for op in ops.values())


def test_binary_bodies_have_their_media_types_and_fields_their_bounds(openapi):
    upload = openapi["paths"]["/v1/sessions/{session_id}/volume"]["put"]
    assert upload["requestBody"]["content"]["application/octet-stream"]["schema"]["format"] == "binary"
    masks = openapi["paths"]["/v1/sessions/{session_id}/jobs/{job_id}/masks"]["get"]["responses"]["200"]
    assert list(masks["content"]) == ["application/octet-stream"]
    shape = openapi["components"]["schemas"]["SessionRequest"]["properties"]["shape"]
    assert shape["items"]["minimum"] == 1 and shape["minItems"] == shape["maxItems"] == 3


def test_booleans_are_not_numbers_and_fastapis_own_refusals_have_a_code(ct):
    from fastapi.testclient import TestClient

    with TestClient(create_app(EngineHost(model=FakeSegVol()))) as http:
        spec = session_spec(ct.volume, ct.ijk_to_ras)
        flag_row = [[True, 0, 0, 0]] + spec["ijk_to_ras"][1:]
        for bad in ({**spec, "shape": [True, 2, 3]}, {**spec, "ijk_to_ras": flag_row}):
            reply = http.post("/v1/sessions", json=bad)
            assert reply.status_code == 422 and reply.json()["code"] == "malformed", reply.text
        for body in (b"{", b"\xff\xfe", b"[1, 2"):
            reply = http.post("/v1/sessions", content=body, headers={"Content-Type": "application/json"})
            assert 400 <= reply.status_code < 500 and set(reply.json()) == {"detail", "code"}, reply.text
        reply = http.get("/no/such/path")
        assert reply.status_code == 404 and set(reply.json()) == {"detail", "code"}
