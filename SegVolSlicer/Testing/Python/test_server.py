"""`segvol serve` and the torch-free client, over loopback only: the app in-process (starlette's TestClient, an
httpx client on an ASGI transport) and one real uvicorn on a free port of 127.0.0.1."""

import contextlib
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from cli_helpers import segvol_serve_in_thread
from fake_segvol import FakeSegVol
from fastapi.testclient import TestClient
from recording_reporter import RecordingReporter
from test_cli import organ_centre_ijk

from SegVolSlicerLib import cli, wire
from SegVolSlicerLib.client import (
    AccessRefused,
    RemoteEngine,
    SegVolClient,
    ServerBusy,
    ServerUnreachable,
    VersionMismatch,
)
from SegVolSlicerLib.engine import EngineHost, TargetJob, VolumeInput
from SegVolSlicerLib.errors import Cancelled, InputError
from SegVolSlicerLib.prompts import Box, Points, Target
from SegVolSlicerLib.server import SegVolServer, ServerSettings, create_app, serve_in_thread
from SegVolSlicerLib.testing.synthetic_ct import make_synthetic_ct, write_ct

URL = "http://127.0.0.1"  # the in-process app's base URL: nothing listens there, the transport is the app


@pytest.fixture(scope="module")
def ct():
    return make_synthetic_ct()


@contextlib.contextmanager
def in_process(engine, settings=None, clock=time.monotonic, api_key=None):
    """A client on the app through an in-process transport, and the app's server state."""
    settings = settings or ServerSettings()
    app = create_app(engine, settings, clock)
    with TestClient(app, base_url=URL) as http:
        yield SegVolClient(URL, api_key or settings.api_key, http=http), app.state.server


def same_results(remote, local):
    assert [r.name for r in remote] == [r.name for r in local]
    for got, want in zip(remote, local):
        assert got.mask.dtype == want.mask.dtype == np.uint8 and got.mask.shape == want.mask.shape
        assert np.array_equal(got.mask, want.mask), got.name
        assert np.array_equal(got.zoom_out_mask, want.zoom_out_mask), got.name
        assert (got.text, got.warnings, got.windows) == (want.text, want.warnings, want.windows)


def prompts_of(ct):
    spleen = organ_centre_ijk(ct, 2)
    liver = np.argwhere(ct.labels == 1)
    return [
        Target("liver", text="liver"),
        Target("clicks", points=Points([spleen, spleen + [6.25, -3.5, 0.0]], [1, 0])),
        Target("box", box=Box(tuple(liver.min(0)[::-1]), tuple(liver.max(0)[::-1]))),
    ]


# --- results ---


def test_results_through_the_server_equal_in_process_bit_for_bit(ct, synthetic_model):
    """Guards the transport (voxels, geometry, prompts as JSON floats, masks as box + bits): any loss or shift
    changes a mask. Real synthetic weights, zoom-out only (full-size forwards are slow on CPU): text, points,
    box."""
    targets = prompts_of(ct)
    local = EngineHost(model=synthetic_model).segment(
        VolumeInput("local", ct.volume, ct.ijk_to_ras), targets, zoom_in=False
    )
    with (
        in_process(EngineHost(model=synthetic_model)) as (client, _),
        client.open_session(ct.volume, ct.ijk_to_ras) as session,
    ):
        same_results(session.segment_many(targets, zoom_in=False), local)
    assert all(result.mask.any() for result in local)


def test_zoom_in_results_through_the_server_equal_in_process(ct):
    """The zoom-in path's results (windows, final and zoom-out masks) through the server, with the fast stand-in."""
    targets = prompts_of(ct)
    local = EngineHost(model=FakeSegVol()).segment(VolumeInput("local", ct.volume, ct.ijk_to_ras), targets)
    with (
        in_process(EngineHost(model=FakeSegVol())) as (client, _),
        client.open_session(ct.volume, ct.ijk_to_ras) as session,
    ):
        same_results(session.segment_many(targets, zoom_in=True), local)
    assert all(result.windows > 0 for result in local)
    assert not np.array_equal(local[0].mask, local[0].zoom_out_mask)


def test_eight_concurrent_clients_on_different_volumes_get_their_own_results(ct):
    """8 clients x 20 prompts through a real uvicorn: no error, and every result is its own volume's (a
    mix-up of sessions, jobs or masks between clients would give another volume's mask)."""
    volumes = [np.roll(ct.volume, 9 * n, axis=2) for n in range(8)]
    targets = [Target(name, text=name) for name in ("liver", "spleen", "aorta", "left kidney")]  # the cheapest
    expected = [
        EngineHost(model=FakeSegVol()).segment(VolumeInput(n, v, ct.ijk_to_ras), targets, zoom_in=False)
        for n, v in enumerate(volumes)
    ]
    assert not np.array_equal(expected[0][0].mask, expected[1][0].mask)  # the volumes are told apart

    def client_run(url, n):
        with SegVolClient(url) as client, client.open_session(volumes[n], ct.ijk_to_ras) as session:
            for prompt in range(20):
                index = (prompt + n) % len(targets)
                same_results([session.segment(targets[index], zoom_in=False)], [expected[n][index]])
        return n

    app = create_app(EngineHost(model=FakeSegVol(), max_sessions=8), ServerSettings(max_sessions=8))
    with serve_in_thread(app) as url, ThreadPoolExecutor(8) as pool:
        assert sorted(pool.map(client_run, [url] * 8, range(8))) == list(range(8))
        assert app.state.server.sessions == {}  # every client closed its session


def test_remote_engine_keeps_one_session_per_volume_and_signature(ct):
    with in_process(EngineHost(model=FakeSegVol())) as (client, server):
        engine = RemoteEngine(URL, http=client.http)
        first = VolumeInput("ct", ct.volume, ct.ijk_to_ras, signature=1)
        engine.segment(first, [TargetJob(Target("liver", text="liver"))], zoom_in=False)
        session_id = engine.session(first).session_id
        engine.segment(first, [TargetJob(Target("liver", text="liver"))], zoom_in=False)
        assert list(server.sessions) == [session_id]  # reused, not reopened
        edited = VolumeInput("ct", ct.volume + 1, ct.ijk_to_ras, signature=2)
        engine.segment(edited, [TargetJob(Target("liver", text="liver"))], zoom_in=False)
        assert engine.closer.join(10)  # the replaced session ends in the background
        assert engine.session_keys() == ["ct"] and session_id not in server.sessions and len(server.sessions) == 1
        engine.forget_if_changed("ct", 2)
        assert engine.session_keys() == ["ct"]
        engine.keep_only([])
        assert engine.closer.join(10) and engine.session_keys() == [] and server.sessions == {}


def test_cli_segment_through_a_server_writes_what_the_local_run_writes(ct, tmp_path, stand_in_model, capsys):
    write_ct(ct, tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz")
    stand_in_model(FakeSegVol())
    argv = ["segment", str(tmp_path / "ct.nii.gz"), "--text", "liver", "--text", "spleen", "--no-zoom-in"]
    assert cli.main(argv + ["-o", str(tmp_path / "local.nii.gz")]) == 0
    key_file = tmp_path / "key.txt"
    key_file.write_text("s3cret\n")
    app = create_app(EngineHost(model=FakeSegVol()), ServerSettings(api_key="s3cret"))
    with serve_in_thread(app) as url:
        assert (
            cli.main(argv + ["-o", str(tmp_path / "remote.nii.gz"), "--server", url, "--api-key-file", str(key_file)])
            == 0
        )
        assert app.state.server.sessions == {}  # the command ended its session
        capsys.readouterr()
        assert cli.main(argv + ["-o", str(tmp_path / "refused.nii.gz"), "--server", url]) == 2
        assert "refused the API key" in capsys.readouterr().err
    assert (tmp_path / "remote.nii.gz").read_bytes() == (tmp_path / "local.nii.gz").read_bytes()
    # The server is gone now: one line, no traceback.
    assert cli.main(argv + ["-o", str(tmp_path / "down.nii.gz"), "--server", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segvol: error: cannot reach the SegVol server") and "Traceback" not in err


def test_prompts_travel_exactly():
    """JSON carries float64 clicks exactly; a lossy encoding (e.g. float32) would move clicks between voxels."""
    import json

    target = Target(
        "x",
        text="liver",
        points=Points([[0.1, 1 / 3, 2**-30], [7.0, 8.5, 9.25]], [1, 0]),
        box=Box((1, 2, 3), (4, 5, 6)),
    )
    back = wire.target_from_json(json.loads(json.dumps(wire.target_to_json(target))))
    assert (back.name, back.text, back.box) == (target.name, target.text, target.box)
    assert back.points.ijk.dtype == np.float64 and np.array_equal(back.points.ijk, target.points.ijk)
    assert np.array_equal(back.points.labels, target.points.labels)


def test_masks_travel_as_their_bounding_box():
    mask = np.zeros((7, 9, 11), np.uint8)
    mask[2, 3, 4] = mask[5, 8, 10] = 1
    bounds, bits = wire.pack_mask(mask)
    assert bounds == [2, 3, 4, 6, 9, 11]
    assert np.array_equal(wire.unpack_mask(mask.shape, bounds, bits), mask)
    assert wire.pack_mask(np.zeros_like(mask)) == (None, b"")
    assert not wire.unpack_mask(mask.shape, None, b"").any()


# --- access, versions, limits ---


def test_requests_without_the_right_key_get_401(ct):
    with in_process(EngineHost(model=FakeSegVol()), ServerSettings(api_key="right")) as (client, _):
        http = client.http
        assert http.get("/info").status_code == 401
        assert http.get("/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert http.post("/v1/sessions", json={}).status_code == 401  # before the body is even looked at
        assert http.get("/info", headers={"Authorization": "Bearer right"}).json()["protocol"] == wire.PROTOCOL_VERSION
        assert http.get("/docs").status_code == 200 and "/v1/sessions" in http.get("/openapi.json").text
        with pytest.raises(AccessRefused, match="refused the API key"):
            SegVolClient(URL, "wrong", http=http).open_session(ct.volume, ct.ijk_to_ras)


def test_serve_refuses_other_addresses_without_a_key(monkeypatch, capsys, stand_in_model):
    monkeypatch.delenv("SEGVOL_API_KEY", raising=False)
    stand_in_model(None)
    assert cli.main(["serve", "--host", "0.0.0.0"]) == 2
    assert "refusing to serve on 0.0.0.0 without an API key" in capsys.readouterr().err


def test_version_mismatch_is_said_on_both_sides(ct, monkeypatch):
    with in_process(EngineHost(model=FakeSegVol())) as (client, _):
        client.headers[wire.PROTOCOL_HEADER] = "99"  # an older or newer client
        with pytest.raises(VersionMismatch, match="client speaks SegVol protocol 99, the server 1"):
            client.info()
    info = SegVolServer.info
    monkeypatch.setattr(SegVolServer, "info", lambda self: {**info(self), "protocol": 2})  # a newer server
    with in_process(EngineHost(model=FakeSegVol())) as (client, _):
        with pytest.raises(VersionMismatch, match="speaks SegVol protocol 2, this client 1"):
            client.open_session(ct.volume, ct.ijk_to_ras)


def test_server_down_is_one_clear_error(ct):
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # free once closed: nothing listens there
    with pytest.raises(ServerUnreachable, match=f"cannot reach the SegVol server at http://127.0.0.1:{port}"):
        SegVolClient(f"http://127.0.0.1:{port}").open_session(ct.volume, ct.ijk_to_ras)


def test_oversized_volumes_and_uploads_are_refused_with_a_message(ct):
    with in_process(EngineHost(model=FakeSegVol()), ServerSettings(max_voxels=100_000)) as (client, _):
        with pytest.raises(InputError, match="at most 100000"):
            client.open_session(ct.volume, ct.ijk_to_ras)
    with in_process(EngineHost(model=FakeSegVol()), ServerSettings(max_upload_mb=0.1)) as (client, server):
        with pytest.raises(InputError, match="upload of .* MB: this server takes at most 0.1 MB"):
            client.open_session(ct.volume, ct.ijk_to_ras)
        assert server.sessions == {}  # the refused session was closed by the client


def test_malformed_uploads_and_requests_get_4xx_with_a_message(ct):
    with in_process(EngineHost(model=FakeSegVol())) as (client, _):
        http = client.http
        spec = {
            "shape": list(ct.volume.shape),
            "dtype": "int16",
            "ijk_to_ras": ct.ijk_to_ras.tolist(),
            "sha256": wire.frame_hash(wire.pack_volume(ct.volume)),
        }

        def session_id(**changes):
            reply = http.post("/v1/sessions", json={**spec, **changes})
            assert reply.status_code == 201, reply.text
            return reply.json()["session_id"]

        singular = np.zeros((4, 4)).tolist()
        for changes, message in [
            ({"dtype": "complex64"}, "dtype"),
            ({"shape": [2, 3]}, "shape"),
            ({"sha256": "abc"}, "sha256"),
            ({"ijk_to_ras": singular}, "independent axes"),
        ]:
            reply = http.post("/v1/sessions", json={**spec, **changes})
            assert 400 <= reply.status_code < 500 and message in reply.json()["detail"], reply.text
        assert http.post("/v1/sessions", content=b"{not json").status_code == 422
        garbage, cut = b"garbage", wire.pack_volume(ct.volume[:10])
        uploads = [
            (garbage, wire.frame_hash(garbage), "not a blosc2 array frame"),
            (cut, wire.frame_hash(cut), "shape (10, 160, 192)"),
            (wire.pack_volume(ct.volume + 1), spec["sha256"], "does not match the session's sha256"),
        ]
        for frame, sha256, message in uploads:
            reply = http.put(f"/v1/sessions/{session_id(sha256=sha256)}/volume", content=frame)
            assert reply.status_code == 400 and message in reply.json()["detail"], reply.text
        flat = np.zeros_like(ct.volume)
        flat_frame = wire.pack_volume(flat)
        reply = http.put(f"/v1/sessions/{session_id(sha256=wire.frame_hash(flat_frame))}/volume", content=flat_frame)
        assert reply.status_code == 400 and "constant" in reply.json()["detail"]
        waiting = session_id()
        reply = http.post(f"/v1/sessions/{waiting}/jobs", json={"targets": [{"name": "liver", "text": "liver"}]})
        assert reply.status_code == 409 and "upload it first" in reply.json()["detail"]


def test_out_of_range_and_malformed_prompts_are_refused(ct):
    with (
        in_process(EngineHost(model=FakeSegVol()), ServerSettings(max_targets=3)) as (client, _),
        client.open_session(ct.volume, ct.ijk_to_ras) as session,
    ):
        with pytest.raises(InputError, match="outside the volume"):
            session.segment(Target("p", points=Points([[500.0, 10.0, 10.0]], [1])))
        with pytest.raises(InputError, match="lies outside the volume"):
            session.segment(Target("b", box=Box((300, 300, 60), (310, 310, 70))))
        with pytest.raises(InputError, match="at most 3"):
            session.segment_many([Target(f"t{n}", text="liver") for n in range(4)])
        jobs = f"/v1/sessions/{session.session_id}/jobs"
        for body, message in [
            ({"targets": []}, "targets"),
            ({"targets": [{"text": "liver"}]}, "name"),
            ({"targets": [{"name": "x"}]}, "no usable prompt"),
            ({"targets": [{"name": "x", "points": {"ijk": [[1, 2]], "labels": [1]}}]}, "points.ijk"),
            ({"targets": [{"name": "x", "points": {"ijk": [[1, 2, 3]], "labels": [7]}}]}, "labels"),
        ]:
            reply = client.http.post(jobs, json=body)
            assert 400 <= reply.status_code < 500 and message in reply.json()["detail"], (body, reply.text)
        assert session.segment(Target("liver", text="liver"), zoom_in=False).mask.any()  # still serving


# --- sessions ---


def test_sessions_are_private_and_unknown_ones_are_404(ct):
    with (
        in_process(EngineHost(model=FakeSegVol())) as (client, _),
        client.open_session(ct.volume, ct.ijk_to_ras) as mine,
        client.open_session(ct.volume[::-1].copy(), ct.ijk_to_ras) as theirs,
    ):
        assert theirs.uploaded  # another volume never borrows a live session's voxels
        http = client.http
        job = http.post(
            f"/v1/sessions/{mine.session_id}/jobs?wait=5",
            json={"targets": [{"name": "liver", "text": "liver"}], "zoom_in": False},
        ).json()
        assert job["state"] == "done"
        for path in (
            f"/v1/sessions/{theirs.session_id}/jobs/{job['job_id']}",
            f"/v1/sessions/{theirs.session_id}/jobs/{job['job_id']}/masks",
        ):
            reply = http.get(path)
            assert reply.status_code == 404 and reply.json()["code"] == "unknown-job"
        reply = http.get(f"/v1/sessions/no-such-session/jobs/{job['job_id']}/masks")
        assert reply.status_code == 404 and "unknown or expired session" in reply.json()["detail"]


def test_same_volume_skips_the_upload_and_a_full_server_says_when_to_retry(ct):
    clock = [0.0]
    settings = ServerSettings(max_sessions=2, idle_timeout_s=100)
    with in_process(EngineHost(model=FakeSegVol()), settings, lambda: clock[0]) as (client, _):
        first = client.open_session(ct.volume, ct.ijk_to_ras)
        again = client.open_session(ct.volume.copy(), ct.ijk_to_ras)  # e.g. Slicer reconnecting
        assert first.uploaded and not again.uploaded
        same_results(
            [again.segment(Target("liver", text="liver"), zoom_in=False)],
            [first.segment(Target("liver", text="liver"), zoom_in=False)],
        )
        clock[0] = 30.0
        again.heartbeat()
        with pytest.raises(ServerBusy, match="all 2 sessions are in use; try again in 70 s") as busy:
            client.open_session(ct.volume[::-1].copy(), ct.ijk_to_ras)
        assert busy.value.retry_after_s == 70


def test_idle_sessions_are_reaped_by_the_clock_and_the_client_reopens(ct):
    clock = [0.0]
    engine = EngineHost(model=FakeSegVol())
    with in_process(engine, ServerSettings(idle_timeout_s=60), lambda: clock[0]) as (client, server):
        session = client.open_session(ct.volume, ct.ijk_to_ras)
        before = session.segment(Target("liver", text="liver"), zoom_in=False)
        old_id = session.session_id
        clock[0] = 50.0
        session.heartbeat()  # renews the lease
        clock[0] = 100.0
        assert server.reap() == [] and engine.session_keys() == [old_id]
        clock[0] = 170.0
        assert server.reap() == [old_id]
        assert server.sessions == {} and engine.session_keys() == []  # the engine's memory is freed too
        after = session.segment(Target("liver", text="liver"), zoom_in=False)  # reopened, volume re-sent
        assert session.session_id != old_id and session.uploaded
        same_results([after], [before])


class GatedSegVol(FakeSegVol):
    """Holds its first zoom-in window encode until released: a cancel lands in the middle of the zoom-in."""

    def __init__(self):
        super().__init__()
        self.in_zoom_in, self.release = threading.Event(), threading.Event()

    def encode_image(self, image):
        if self.image_calls == 1:  # the zoom-out image was the first
            self.in_zoom_in.set()
            assert self.release.wait(30), "the test never released the model"
        return super().encode_image(image)


def test_cancel_in_the_middle_of_the_zoom_in(ct):
    model = GatedSegVol()
    with (
        in_process(EngineHost(model=model)) as (client, server),
        client.open_session(ct.volume, ct.ijk_to_ras) as session,
        ThreadPoolExecutor(1) as pool,
    ):
        reporter = RecordingReporter()
        running = pool.submit(session.segment, Target("liver", text="liver"), True, reporter)
        assert model.in_zoom_in.wait(30)
        reporter.cancel.set()
        job = next(iter(server.sessions[session.session_id].jobs.values()))
        deadline = time.monotonic() + 30
        while not job.reporter.cancel.is_set():  # the client passed the cancel on to the server
            assert time.monotonic() < deadline
            time.sleep(0.01)
        model.release.set()
        with pytest.raises(Cancelled):
            running.result(30)
        assert job.state == "cancelled" and job.reporter.stage == "zoom-in" and job.reporter.done == 1
        assert ("zoom-out", 1, 1) in reporter.events
        # The session serves the next request.
        assert session.segment(Target("liver", text="liver"), zoom_in=False).mask.any()


def test_the_client_imports_without_torch():
    code = """
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'fastapi', 'uvicorn', 'monai'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, NoTorch())
from SegVolSlicerLib.client import RemoteEngine, SegVolClient
from SegVolSlicerLib.engine import VolumeInput
import numpy as np
from SegVolSlicerLib import wire
mask = np.zeros((4, 5, 6), np.uint8); mask[1:3, 2, 3:5] = 1
assert np.array_equal(wire.unpack_mask(mask.shape, *wire.pack_mask(mask)), mask)
assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)
print('ok')
"""
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0 and completed.stdout.strip() == "ok", completed.stderr


# --- segvol serve ---


def test_segvol_serve_applies_its_options(ct, tmp_path, monkeypatch, stand_in_model):
    """The command as users start it (in a thread; the stand-in as its model): key, session limit, timeout."""
    stand_in_model(FakeSegVol())
    monkeypatch.setenv("SEGVOL_API_KEY", "from-the-environment")  # the key file wins
    (tmp_path / "key").write_text("k3y\n")
    argv = [
        "--api-key-file",
        str(tmp_path / "key"),
        "--max-sessions",
        "1",
        "--idle-timeout",
        "30",
        "--device",
        "cpu",
    ]
    with segvol_serve_in_thread(argv, monkeypatch) as url:
        with pytest.raises(AccessRefused):
            SegVolClient(url, "from-the-environment").info()
        with SegVolClient(url, "k3y") as client:
            info = client.info()
            assert info["limits"]["max_sessions"] == 1 and info["limits"]["idle_timeout_s"] == 30
            assert info["model"]["device"] == "cpu"
            with client.open_session(ct.volume, ct.ijk_to_ras) as session:
                assert session.segment(Target("liver", text="liver"), zoom_in=False).mask.any()
                with pytest.raises(ServerBusy, match="try again in 30 s"):
                    client.open_session(ct.volume[::-1].copy(), ct.ijk_to_ras)


def test_segvol_serve_on_a_port_in_use_is_one_clear_error(stand_in_model, capsys):
    stand_in_model(None)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        assert cli.main(["serve", "--port", str(taken.getsockname()[1])]) == 2
    assert "choose another --port" in capsys.readouterr().err


def test_help_documents_the_server_options(capsys):
    for command, options in {
        "serve": [
            "--checkpoint",
            "--host",
            "--port",
            "--device",
            "--api-key-file",
            "--max-sessions",
            "--idle-timeout",
            "--max-upload-mb",
            "--max-memory-mb",
            "--max-connections",
            "cuda:all",
        ],
        "segment": ["--server", "--api-key-file"],
    }.items():
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = capsys.readouterr().out
        assert all(option in text for option in options), command


def test_a_session_closed_by_its_owner_is_never_reopened(ct):
    """RemoteEngine.forget closes a removed volume's session while a run may still poll it: reopening it then
    would upload the volume again into a session nobody tracks or closes."""
    from SegVolSlicerLib.client import SessionExpired

    with in_process(EngineHost(model=FakeSegVol())) as (client, server):
        session = client.open_session(ct.volume, ct.ijk_to_ras)
        session.close()
        with pytest.raises(SessionExpired, match="was closed"):
            session.segment(Target("liver", text="liver"), zoom_in=False)
        assert server.sessions == {}


def test_a_wait_without_since_waits_for_the_end(ct):
    """`since` left out means "only the end counts": a status request that waits must not answer at once."""
    release = threading.Event()

    class Gated(FakeSegVol):
        def encode_image(self, image):
            assert release.wait(30)
            return super().encode_image(image)

    with (
        in_process(EngineHost(model=Gated())) as (client, _),
        client.open_session(ct.volume, ct.ijk_to_ras) as session,
    ):
        http = client.http
        job = http.post(
            f"/v1/sessions/{session.session_id}/jobs?wait=0",
            json={"targets": [{"name": "liver", "text": "liver"}], "zoom_in": False},
        ).json()
        threading.Timer(0.3, release.set).start()
        status = http.get(f"/v1/sessions/{session.session_id}/jobs/{job['job_id']}?wait=20").json()
        assert status["state"] == "done"
