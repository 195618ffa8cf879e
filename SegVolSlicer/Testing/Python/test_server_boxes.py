"""Several boxes behind one address, for real: two `segvol serve` processes (synthetic weights, each with its
session prefix) behind Debian's nginx with the project's deploy/segvol-nginx.conf, all on 127.0.0.1. Sessions
open on both boxes, every request of a session reaches its box, results equal in-process bit for bit, and a
box that goes down is answered by the client opening its session again on the other box."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from SegVolSlicerLib.client import SegVolClient
from SegVolSlicerLib.engine import EngineHost, VolumeInput
from SegVolSlicerLib.prompts import Target
from SegVolSlicerLib.testing.nginx import nginx_executable, run_nginx, wait_for_port
from SegVolSlicerLib.testing.processes import stop_process
from SegVolSlicerLib.testing.synthetic_ct import make_synthetic_ct

CONFIG = Path(__file__).parents[3] / "deploy" / "segvol-nginx.conf"
pytestmark = pytest.mark.skipif(
    nginx_executable() is None, reason="nginx is not installed here (.ci/run installs Debian's)"
)


def start_box(checkpoint, prefix: str, log: Path) -> tuple[subprocess.Popen, int]:
    """`segvol serve` on a free port of 127.0.0.1 (it prints its address once the model is loaded)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "OMP_NUM_THREADS": "1"}
    env.pop("SEGVOL_API_KEY", None)
    command = [sys.executable, "-m", "SegVolSlicerLib.cli", "serve", "--checkpoint", str(checkpoint)]
    command += ["--device", "cpu", "--precision", "fp32", "--host", "127.0.0.1", "--port", "0"]  # fp32: parity
    command += ["--session-prefix", prefix]
    process = subprocess.Popen(command, stderr=log.open("w"), stdout=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 180
    try:  # a box that never comes up is stopped here: nothing outlives the test
        while not (found := re.search(r"at http://127\.0\.0\.1:(\d+)", log.read_text(encoding="utf-8"))):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text(encoding="utf-8")
            time.sleep(0.2)
        port = int(found.group(1))  # the model is loaded before the address is printed; uvicorn listens just after
        wait_for_port(
            port, lambda: process.poll() is None, deadline - time.monotonic(), lambda: log.read_text(encoding="utf-8")
        )
    except BaseException:
        stop(process)
        raise
    return process, port


def stop(process: subprocess.Popen) -> None:
    stop_process(process, signal.SIGINT)  # segvol serve's Ctrl-C: it closes its sessions


def sessions_on(port: int) -> int:
    with SegVolClient(f"http://127.0.0.1:{port}") as client:
        return client.request("GET", "/info").json()["sessions"]


def test_two_boxes_behind_nginx_keep_their_sessions_and_a_box_down_is_reopened_elsewhere(
    synthetic_checkpoint, synthetic_model, tmp_path
):
    ct = make_synthetic_ct()
    target = Target("liver", text="liver")
    volume = VolumeInput("ct", ct.volume, ct.ijk_to_ras)
    local = EngineHost(model=synthetic_model).segment(volume, [target], zoom_in=False)[0]
    boxes, ports = {}, {}
    try:
        for name in ("box1", "box2"):
            boxes[name], ports[name] = start_box(synthetic_checkpoint, name, tmp_path / f"{name}.log")
        with (
            run_nginx(CONFIG, (ports["box1"], ports["box2"]), tmp_path / "nginx") as listen,
            SegVolClient(f"http://127.0.0.1:{listen}") as client,
        ):
            first = client.open_session(ct.volume, ct.ijk_to_ras)
            second = client.open_session(ct.volume, ct.ijk_to_ras)  # least_conn: the other box
            assert {first.session_id.split("-")[0], second.session_id.split("-")[0]} == {"box1", "box2"}
            assert sessions_on(ports["box1"]) == sessions_on(ports["box2"]) == 1
            for session in (first, second):  # a request reaching another box would be a 404 and a reopen
                opened = session.session_id
                for _ in range(2):
                    result = session.segment(target, zoom_in=False)
                    assert (result.mask == local.mask).all() and (result.zoom_out_mask == local.zoom_out_mask).all()
                session.heartbeat()
                assert session.session_id == opened
            down = first.session_id.split("-")[0]
            stop(boxes[down])
            result = first.segment(target, zoom_in=False)  # 502 from nginx: the session opens again elsewhere
            other = "box2" if down == "box1" else "box1"
            assert first.session_id.startswith(f"{other}-") and (result.mask == local.mask).all()
            assert sessions_on(ports[other]) == 2
            first.close()
            second.close()
            assert sessions_on(ports[other]) == 0
    finally:
        for process in boxes.values():
            stop(process)
