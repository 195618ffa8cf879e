"""`segvol serve` on a hospital network: bounded before the key, bounded in memory, every malformed request a 4xx,
no leak of what others hold, and one server over several devices. Loopback only; every loop bounded."""

import hashlib
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from cli_helpers import segvol_serve_in_thread
from fake_segvol import FakeSegVol
from fastapi.testclient import TestClient
from test_server import in_process, prompts_of, same_results

from SegVolSlicerLib import cli, wire
from SegVolSlicerLib.client import SegVolClient, ServerBusy, ServerError, ServerUnreachable
from SegVolSlicerLib.engine import EngineHost, ModelChoice, VolumeInput
from SegVolSlicerLib.errors import InputError
from SegVolSlicerLib.prompts import Target
from SegVolSlicerLib.server import (
    SegVolServer,
    ServerSettings,
    create_app,
    expand_devices,
    serve_in_thread,
    weights_identity,
)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def session_spec(volume, ijk_to_ras):
    return {
        "shape": list(volume.shape),
        "dtype": wire.voxel_type(volume),
        "ijk_to_ras": np.asarray(ijk_to_ras).tolist(),
        "sha256": wire.frame_hash(wire.pack_volume(volume)),
    }


def read_reply(sock: socket.socket) -> bytes:
    """The response head and its body (as long as its Content-Length says), or what came before the server
    closed the connection."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _content_length(data):
        part = sock.recv(65536)
        if not part:
            break
        data += part
    return data


def _content_length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


# --- before the key, before the body ---


def test_an_unauthenticated_100_mb_body_is_refused_from_its_head_with_bounded_memory():
    """The key and the sizes are checked on the head: the 401 comes before the body is sent (reading it first
    parsed 100 MB of JSON before saying 401), and the body, sent anyway, is never read: the connection closes."""
    app = create_app(EngineHost(model=FakeSegVol()), ServerSettings(api_key="right"))
    size, block = 100 * 2**20, b"x" * 2**20
    with serve_in_thread(app) as url, socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), 10) as sock:
        head = (
            f"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
        )
        sock.sendall(head.encode() + block)
        reply = read_reply(sock)  # times out (the test fails) if the server waits for the body
        assert reply.startswith(b"HTTP/1.1 401") and b"missing or wrong API key" in reply
        before, peak = rss_mb(), 0.0
        with pytest.raises(OSError):  # reset: the server stopped reading
            for _ in range(size // len(block) - 1):
                sock.sendall(block)
                peak = max(peak, rss_mb())
        assert peak - before < 48, f"the server held {peak - before:.0f} MB of a refused body"


def test_the_bearer_scheme_is_case_insensitive_and_json_bodies_are_limited():
    settings = ServerSettings(api_key="right", max_request_mb=0.01)
    with in_process(EngineHost(model=FakeSegVol()), settings) as (client, _):
        http = client.http
        for header in ("Bearer right", "bearer right", "BEARER  right "):
            assert http.get("/info", headers={"Authorization": header}).status_code == 200, header
        for header in ("Basic right", "Bearer", "right", "Bearer righ"):
            assert http.get("/info", headers={"Authorization": header}).status_code == 401, header
        key = {"Authorization": "Bearer right"}
        reply = http.post("/v1/sessions", content=b"[" + b"1," * 10_000 + b"1]", headers=key)
        assert reply.status_code == 413 and "at most 0.0 MB" in reply.json()["detail"]
        chunked = http.post("/v1/sessions", content=iter([b"[" + b"1," * 3000] * 4), headers=key)  # no length
        assert chunked.status_code == 413 and chunked.json()["code"] == "request-too-large"


def test_a_chunk_bomb_is_refused_before_decompression(ct):
    """A 259-byte frame declaring a 2 x 2 x 2 array in one 400^3 chunk: the shape and type fit the session,
    the chunk does not; decompressing it first cost +488 MB."""
    code = """
import numpy as np, blosc2
from SegVolSlicerLib import wire
from SegVolSlicerLib.errors import InputError
def peak_mb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024
voxels = np.arange(400**3 // 8, dtype=np.int16)  # not zeros: a real chunk to decompress
frame = blosc2.empty((2, 2, 2), dtype=np.int16, chunks=(400, 400, 400), blocks=(400, 400, 50))
frame.schunk.update_data(0, np.resize(voxels, 400**3).tobytes(), copy=True)
bomb = frame.to_cframe()
del voxels
before = peak_mb()
try:
    wire.unpack_volume(bomb, (2, 2, 2), "int16")
    print("accepted")
except InputError as error:
    print(f"{peak_mb() - before:.0f}", error)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    grown_mb, message = done.stdout.split(" ", 1)
    assert "do not fit the declared int16 array of shape (2, 2, 2)" in message
    assert float(grown_mb) < 20, f"{grown_mb} MB allocated for a refused frame"
    with in_process(EngineHost(model=FakeSegVol())) as (client, _):
        ok = wire.pack_volume(ct.volume)
        assert np.array_equal(wire.unpack_volume(ok, ct.volume.shape, "int16"), ct.volume)


def test_the_memory_budget_refuses_the_session_that_would_exceed_it(ct):
    """Each session's declared voxels (held from the open, before any upload: a 2 KB frame of a constant
    volume pins them all) plus the room an engine needs for it count against --max-memory-mb."""
    # int16: 2 bytes a voxel, the engine 4 more, a job's result 6 more: 6 x this a session, 7 x for two
    volume_mb = ct.volume.nbytes / 2**20
    settings = ServerSettings(max_memory_mb=volume_mb * 6.5, idle_timeout_s=100)
    clock = [0.0]
    with in_process(EngineHost(model=FakeSegVol()), settings, lambda: clock[0]) as (client, server):
        first = client.open_session(ct.volume, ct.ijk_to_ras)
        with pytest.raises(ServerBusy, match="memory .* is taken by other volumes; try again in 100 s") as busy:
            client.open_session(ct.volume[::-1].copy(), ct.ijk_to_ras)
        assert busy.value.retry_after_s == 100 and len(server.sessions) == 1
        big = np.zeros((ct.volume.shape[0] * 2, *ct.volume.shape[1:]), np.int16)
        reply = client.http.post("/v1/sessions", json=session_spec(big, ct.ijk_to_ras))
        assert reply.status_code == 413 and "crop or resample" in reply.json()["detail"]
        first.close()
        with client.open_session(ct.volume[::-1].copy(), ct.ijk_to_ras) as second:  # room again
            assert second.segment(Target("liver", text="liver"), zoom_in=False).mask.shape == ct.volume.shape


# --- the event loop and the connections ---


def test_45_long_polls_leave_info_and_cancel_fast(ct):
    """Status waits on the event loop: 45 of them on a running job took every worker thread, and /info and
    cancel waited 6-9.5 s for one."""
    release = threading.Event()

    class Held(FakeSegVol):
        def encode_image(self, image):
            assert release.wait(60)
            return super().encode_image(image)

    app = create_app(EngineHost(model=Held()))
    try:
        with serve_in_thread(app) as url, SegVolClient(url) as client:
            session = client.open_session(ct.volume, ct.ijk_to_ras)
            job = client.request(
                "POST",
                f"/v1/sessions/{session.session_id}/jobs",
                json={"targets": [{"name": "liver", "text": "liver"}]},
            ).json()
            path = f"/v1/sessions/{session.session_id}/jobs/{job['job_id']}"

            def poll(_):
                with httpx.Client(timeout=30) as http:
                    return http.get(url + path, params={"wait": 10, "since": job["version"] + 100}).json()["state"]

            with ThreadPoolExecutor(45) as pool:
                polls = pool.map(poll, range(45))
                time.sleep(1.0)  # the polls are waiting now
                with httpx.Client(timeout=30) as http:
                    start = time.monotonic()
                    assert http.get(url + "/info").status_code == 200
                    assert http.post(url + path + "/cancel").status_code == 200
                    answered_in = time.monotonic() - start
                release.set()
                assert set(polls) == {"cancelled"}  # woken by the end, long before their 10 s
            assert answered_in < 4.0, f"/info and cancel took {answered_in:.1f} s behind 45 long polls"
            session.close()
    finally:
        release.set()


def test_idle_and_half_sent_connections_are_closed(ct):
    """A connection that sends nothing, or a head that never ends, is closed after the head deadline; one
    that stalls inside a body gets 408: none holds a file descriptor for ever."""
    settings = ServerSettings(header_timeout_s=0.5, body_timeout_s=0.5)
    with serve_in_thread(create_app(EngineHost(model=FakeSegVol()), settings)) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), 10) as silent:
            assert silent.recv(1) == b""  # closed; a kept connection times out here (socket.timeout)
        with socket.create_connection(("127.0.0.1", port), 10) as trickle:
            trickle.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\n")
            for _ in range(20):  # a byte now and then: uvicorn's own keep-alive timer restarts on each
                time.sleep(0.1)
                try:
                    trickle.sendall(b"X")
                except OSError:
                    break
            assert trickle.recv(1) == b""
        with socket.create_connection(("127.0.0.1", port), 10) as stalled:
            body = json.dumps(session_spec(ct.volume, ct.ijk_to_ras)).encode()
            stalled.sendall(
                b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body[:10]
            )
            assert read_reply(stalled).startswith(b"HTTP/1.1 408")
        with SegVolClient(url) as client:  # and the server serves on
            assert client.info()["protocol"] == wire.PROTOCOL_VERSION


# --- malformed requests, faults ---


def test_malformed_requests_are_4xx_and_the_clients_next_call_works(ct, monkeypatch):
    """Ragged matrix rows, a label beyond int64, non-finite corners, a NaN wait were 500s; after a 500 the
    server closed the client's kept-alive connection and the next call said "cannot reach the server"."""
    app = create_app(EngineHost(model=FakeSegVol()))
    with serve_in_thread(app) as url, SegVolClient(url) as client, client.open_session(ct.volume, ct.ijk_to_ras) as s:
        spec = session_spec(ct.volume, ct.ijk_to_ras)
        ragged = [row[:3] if n == 1 else row for n, row in enumerate(spec["ijk_to_ras"])]
        jobs = f"/v1/sessions/{s.session_id}/jobs"
        for method, path, text, where in [
            ("POST", "/v1/sessions", json.dumps({**spec, "ijk_to_ras": ragged}), "ijk_to_ras.1"),
            ("POST", "/v1/sessions", json.dumps({**spec, "ijk_to_ras": [[1e999] * 4] * 4}), "ijk_to_ras.0.0"),
            ("POST", jobs, '{"targets": [{"name": "p", "points": {"ijk": [[1, 2, 3]], "labels": [1e30]}}]}', "labels"),
            (
                "POST",
                jobs,
                '{"targets": [{"name": "p", "points": {"ijk": [[1, 2, 3]], "labels": [' + str(2**70) + "]}}]}",
                "labels",
            ),
            (
                "POST",
                jobs,
                '{"targets": [{"name": "b", "box": {"ijk_min": [0, 0, 0], "ijk_max": [1e999, 5, 5]}}]}',
                "ijk_max",
            ),
            (
                "POST",
                jobs,
                '{"targets": [{"name": "b", "box": {"ijk_min": [0, 0, Infinity], "ijk_max": [5, 5, 5]}}]}',
                "ijk_min",
            ),
            (
                "POST",
                jobs,
                '{"targets": [{"name": "b", "box": {"ijk_min": [NaN, 0, 0], "ijk_max": [5, 5, 5]}}]}',
                "ijk_min",
            ),
            ("POST", jobs + "?wait=nan", '{"targets": [{"name": "l", "text": "liver"}]}', "wait"),
        ]:
            reply = client.http.request(method, url + path, content=text, headers={"Content-Type": "application/json"})
            assert 400 <= reply.status_code < 500 and where in reply.json()["detail"], (text, reply.text)
            assert s.segment(Target("liver", text="liver"), zoom_in=False).mask.any()  # the next call is fine

        def broken_info(self):
            raise RuntimeError("a bug")

        monkeypatch.setattr(SegVolServer, "info", broken_info)
        with pytest.raises(ServerError, match="^server error: the server failed on this request"):
            client.request("GET", "/info")
        monkeypatch.undo()
        assert client.request("GET", "/info").json()["protocol"] == wire.PROTOCOL_VERSION


class ResettingServer:
    """A raw HTTP/1.1 server on 127.0.0.1 that answers each connection's first request and closes the
    connection on its second without a word, as a restarted proxy or server does."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.connections = 0
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def serve(self):
        for _ in range(2):  # the test's two connections
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(10)
                if read_reply(conn):
                    body = b'{"protocol": 1}'
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                    read_reply(conn)  # the next request on this connection: closed unanswered

    def __enter__(self):
        self.thread.start()
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def __exit__(self, *exc_info):
        self.listener.close()
        self.thread.join(15)


def test_the_client_sends_an_idempotent_request_again_once_on_a_reset_connection():
    with ResettingServer() as url, SegVolClient(url) as client:
        assert client.request("GET", "/info").json() == {"protocol": 1}
        assert client.request("GET", "/info").json() == {"protocol": 1}  # reset, sent again on a new connection
        with pytest.raises(ServerUnreachable):  # a POST may have reached the server: never sent twice
            client.request("POST", "/v1/sessions")


# --- what clients may learn ---


def test_a_hash_alone_reuses_nothing_and_tells_nothing(ct):
    """Another session's sha256, shape and type (which a client may have seen) got a session on its voxels
    and masks, and the answer told anyone whether the volume was open. Now only a client that holds the
    voxels reuses them, and the answers are the same whether the volume is open or not."""
    with in_process(EngineHost(model=FakeSegVol())) as (client, server), client.open_session(ct.volume, ct.ijk_to_ras):
        http, spec = client.http, session_spec(ct.volume, ct.ijk_to_ras)
        unknown = session_spec(ct.volume[::-1].copy(), ct.ijk_to_ras)
        held, not_held = http.post("/v1/sessions", json=spec).json(), http.post("/v1/sessions", json=unknown).json()
        assert held.keys() == not_held.keys() and held["upload_needed"] and not_held["upload_needed"]
        guess = wire.voxel_proof(bytes.fromhex(held["nonce"]), np.zeros_like(ct.volume))
        reply = http.post(f"/v1/sessions/{held['session_id']}/reuse", json={"proof": guess}).json()
        assert reply == {"reused": False} and server.sessions[held["session_id"]].voxels is None
        job = http.post(f"/v1/sessions/{held['session_id']}/jobs", json={"targets": [{"name": "l", "text": "liver"}]})
        assert job.status_code == 409 and "upload it first" in job.json()["detail"]
        again = http.post(f"/v1/sessions/{held['session_id']}/reuse", json={"proof": guess})
        assert again.status_code == 409  # one try per session
        holder = client.open_session(ct.volume.copy(), ct.ijk_to_ras)  # holds the voxels: proves it
        assert not holder.uploaded and holder.segment(Target("liver", text="liver"), zoom_in=False).mask.any()


def test_info_names_the_weights_by_name_and_digest_never_by_path(tmp_path):
    weights = tmp_path / "private" / "SegVol_v1.pth"
    weights.parent.mkdir()
    weights.write_bytes(b"\x80weights")
    engine = EngineHost(ModelChoice(str(weights)), model=FakeSegVol())  # as `segvol serve --checkpoint FILE`
    identity = weights_identity("SegVol_v1.pth", weights)
    for given in (None, identity):
        with TestClient(create_app(engine, weights=given), base_url="http://127.0.0.1") as http:
            info = http.get("/info").json()
            assert info["model"]["weights"]["name"] == "SegVol_v1.pth", info
            assert str(tmp_path) not in json.dumps(info) and "private" not in json.dumps(info)
            assert info["model"]["weights"]["sha256"] == (given or {}).get("sha256")
    assert identity["sha256"] == hashlib.sha256(b"\x80weights").hexdigest()


# --- sessions and logs ---


def test_a_half_opened_session_expires_after_the_upload_grace(ct):
    """A client killed before its upload held its session slot for the whole idle timeout."""
    clock = [0.0]
    settings = ServerSettings(idle_timeout_s=600, upload_grace_s=20, max_sessions=1)
    with in_process(EngineHost(model=FakeSegVol()), settings, lambda: clock[0]) as (client, server):
        opened = client.http.post("/v1/sessions", json=session_spec(ct.volume, ct.ijk_to_ras)).json()["session_id"]
        clock[0] = 15.0
        assert server.reap() == []
        clock[0] = 21.0
        assert server.reap() == [opened]
        with client.open_session(ct.volume, ct.ijk_to_ras) as session:  # the slot is free again
            clock[0] = 100.0
            assert server.reap() == [] and session.segment(Target("liver", text="liver"), zoom_in=False).mask.any()


def test_logs_have_no_session_ids_and_a_disconnect_is_one_line(ct, caplog):
    caplog.set_level(logging.INFO)
    app = create_app(EngineHost(model=FakeSegVol()))
    with serve_in_thread(app) as url:
        with SegVolClient(url) as client, client.open_session(ct.volume, ct.ijk_to_ras) as session:
            session.segment(Target("liver", text="liver"), zoom_in=False)
            ids = [session.session_id, *app.state.server.sessions[session.session_id].jobs]
            frame = wire.pack_volume(ct.volume[::-1].copy())
            spec = {**session_spec(ct.volume[::-1].copy(), ct.ijk_to_ras)}
            cut = client.request("POST", "/v1/sessions", json=spec).json()["session_id"]
            ids.append(cut)
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), 10) as sock:
            sock.sendall(
                f"PUT /v1/sessions/{cut}/volume HTTP/1.1\r\nHost: x\r\nContent-Length: {len(frame)}\r\n\r\n".encode()
                + frame[:1000]
            )
        deadline = time.monotonic() + 10
        while "disconnected" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
    server_log = [r for r in caplog.records if r.name.startswith(("segvol", "uvicorn"))]  # not the client's
    text = "\n".join(r.getMessage() for r in server_log)
    assert not any(r.exc_info for r in server_log) and "Traceback" not in text, text
    assert "/v1/sessions/…/jobs/…/masks 200" in text and all(i not in text for i in ids), text
    assert [r.getMessage() for r in server_log if "disconnected" in r.getMessage()] == [
        "PUT /v1/sessions/…/volume: the client disconnected before the request was complete"
    ]


# --- several devices ---


def test_two_cpu_replicas_run_two_sessions_at_once_with_in_process_results(ct, monkeypatch, stand_in_model):
    """`segvol serve --device cpu --device cpu`: one model per device, the sessions spread over them, and the
    two jobs overlap in time (each model waits at a barrier for the other: one model for both, or one worker
    for both, breaks the barrier); every result equals in-process bit for bit."""
    volumes = [ct.volume, np.roll(ct.volume, 9, axis=2)]
    targets = prompts_of(ct)
    expected = [
        EngineHost(model=FakeSegVol()).segment(VolumeInput(n, v, ct.ijk_to_ras), targets, False)
        for n, v in enumerate(volumes)
    ]
    meet, spans = threading.Barrier(2, timeout=20), {}

    class Meeting(FakeSegVol):
        def encode_image(self, image):
            start = time.monotonic()
            if self.image_calls == 0:
                meet.wait()
            result = super().encode_image(image)
            spans.setdefault(id(self), (start, time.monotonic()))
            return result

    models = {}
    stand_in_model(per_load=lambda host: models.setdefault(id(host), Meeting()))
    with segvol_serve_in_thread(["--device", "cpu", "--device", "cpu"], monkeypatch) as url:
        with SegVolClient(url) as client:
            sessions = [client.open_session(volume, ct.ijk_to_ras) for volume in volumes]
            devices = client.request("GET", "/info").json()["devices"]
            assert [(d["device"], d["sessions"]) for d in devices] == [("cpu", 1), ("cpu", 1)]
            with ThreadPoolExecutor(2) as pool:
                results = list(pool.map(lambda s: s.segment_many(targets, zoom_in=False), sessions))
            for got, want in zip(results, expected):
                same_results(got, want)
            for session in sessions:
                session.close()
    (start_a, end_a), (start_b, end_b) = spans.values()
    assert max(start_a, start_b) < min(end_a, end_b)  # the two devices worked at the same time
    assert len(models) == 2


def test_a_volume_beyond_the_whole_budget_is_one_sentence_for_the_client(ct):
    with in_process(EngineHost(model=FakeSegVol()), ServerSettings(max_memory_mb=0.5)) as (client, server):
        with pytest.raises(InputError, match="this server holds at most 0 MB for its clients; crop or resample"):
            client.open_session(ct.volume, ct.ijk_to_ras)
        assert server.sessions == {}


def test_cuda_all_without_a_gpu_is_one_clear_error(monkeypatch, capsys, stand_in_model):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    stand_in_model(None)
    assert cli.main(["serve", "--device", "cuda:all", "--port", "0"]) == 2
    assert "--device cuda:all: no CUDA GPU is usable here" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert expand_devices(["cpu", "cuda:all"]) == ["cpu", "cuda:0", "cuda:1", "cuda:2"]
