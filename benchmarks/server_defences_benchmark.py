"""What the server's defences (issue 25) cost, in ratios of one run (the machine is shared: absolute times vary):

1. the head limit per request: GET /info on a kept-alive connection through uvicorn's own httptools protocol
   and through the server's HeadLimitProtocol (head size, deadline, per-peer count), alternating;
2. memory under load: 20 sessions (each its own CT, four targets kept for corrections) against a small
   --max-memory-mb, the server in its own process: the largest /info memory_bytes against the budget, and the
   server's RSS growth over the run;
3. the click latency a server adds: one click (a point, zoom-out only, the test suite's stand-in model) in
   process, over loopback, and through nginx (deploy/segvol-nginx.conf) to the same server, alternating.

    python benchmarks/server_defences_benchmark.py [--requests 400] [--sessions 20] [--budget-mb 160] [--clicks 30]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SegVolSlicer" / "Testing" / "Python"))

from fake_segvol import FakeSegVol  # noqa: E402 (the test suite's stand-in model)

from SegVolSlicerLib.client import RemoteEngine, SegVolClient, ServerBusy, WireJob  # noqa: E402
from SegVolSlicerLib.engine import EngineHost, VolumeInput  # noqa: E402
from SegVolSlicerLib.prompts import Points, Target  # noqa: E402
from SegVolSlicerLib.server import ServerSettings, create_app, serve_in_thread  # noqa: E402
from SegVolSlicerLib.testing.nginx import nginx_executable, run_nginx  # noqa: E402
from SegVolSlicerLib.testing.synthetic_ct import make_synthetic_ct  # noqa: E402


def median_ms(seconds: list[float]) -> float:
    return float(np.median(seconds) * 1000)


def head_limit_cost(requests: int) -> None:
    app = create_app(EngineHost(model=FakeSegVol()))
    settings = app.state.server.settings
    times: dict[str, list[float]] = {"uvicorn's httptools": [], "HeadLimitProtocol": []}
    with (
        serve_in_thread(app, settings, http="httptools") as bare,
        serve_in_thread(app, settings) as limited,
        SegVolClient(bare) as bare_client,
        SegVolClient(limited) as limited_client,
    ):
        logging.getLogger("segvol.server").setLevel(logging.WARNING)  # the access log would time the logging
        clients = list({"uvicorn's httptools": bare_client, "HeadLimitProtocol": limited_client}.items())
        for n in range(requests):  # alternating, and which goes first too (one thread's log lines slow the next)
            for name, client in clients[n % 2 :] + clients[: n % 2]:
                started = time.perf_counter()
                client.request("GET", "/info")
                times[name].append(time.perf_counter() - started)
    base, limited_ms = median_ms(times["uvicorn's httptools"]), median_ms(times["HeadLimitProtocol"])
    print(
        f"1. GET /info, {requests} each, median: httptools {base:.2f} ms, with the head limit {limited_ms:.2f} ms "
        f"(ratio {limited_ms / base:.3f})"
    )


def serve_in_subprocess(budget_mb: float, sessions: int) -> tuple[subprocess.Popen, str]:
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[3])\n"
        "from fake_segvol import FakeSegVol\n"
        "from SegVolSlicerLib.engine import EngineHost, SessionOptions\n"
        "from SegVolSlicerLib.server import ServerSettings, create_app, serve_in_thread\n"
        "n = int(sys.argv[2]); engine = EngineHost(model=FakeSegVol(), max_sessions=n,"
        " session_options=SessionOptions(probabilities=True))\n"
        "settings = ServerSettings(max_memory_mb=float(sys.argv[1]), max_sessions=n, idle_timeout_s=600)\n"
        "with serve_in_thread(create_app(engine, settings)) as url:\n"
        "    print(url, flush=True); sys.stdin.read()\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(budget_mb), str(sessions), str(ROOT / "SegVolSlicer" / "Testing" / "Python")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    return process, process.stdout.readline().strip()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_under_load(sessions: int, budget_mb: float) -> None:
    ct = make_synthetic_ct()
    process, url = serve_in_subprocess(budget_mb, sessions)
    peak = {"reported": 0, "rss": 0.0}
    done = threading.Event()
    try:
        with SegVolClient(url) as probe:
            base_rss = rss_mb(process.pid)

            def watch():
                while not done.is_set():
                    peak["reported"] = max(peak["reported"], probe.request("GET", "/info").json()["memory_bytes"])
                    peak["rss"] = max(peak["rss"], rss_mb(process.pid))
                    time.sleep(0.05)

            watcher = threading.Thread(target=watch)
            watcher.start()

            def one(n: int) -> str:
                volume = VolumeInput(n, np.roll(ct.volume, 5 * n, axis=2), ct.ijk_to_ras)
                with RemoteEngine(url) as engine:
                    try:
                        for name in ("liver", "spleen", "aorta", "left kidney"):
                            engine.segment(volume, [WireJob(Target(name, text=name), ("seg", name))])
                    except ServerBusy:
                        return "busy"
                return "done"

            with ThreadPoolExecutor(sessions) as pool:
                outcomes = list(pool.map(one, range(sessions)))
            done.set()
            watcher.join()
    finally:
        done.set()
        process.stdin.close()
        process.wait(60)
    print(
        f"2. {sessions} sessions, budget {budget_mb:.0f} MB: {outcomes.count('done')} ran, "
        f"{outcomes.count('busy')} were told busy (503); /info memory at most {peak['reported'] / 2**20:.1f} MB "
        f"(never above the budget: {peak['reported'] <= budget_mb * 2**20}); server RSS "
        f"{base_rss:.0f} MB at rest, at most {peak['rss']:.0f} MB (+{peak['rss'] - base_rss:.0f} MB)"
    )


def click_latency(clicks: int) -> None:
    ct = make_synthetic_ct()
    centre = np.argwhere(ct.labels == 1).mean(0)[::-1]
    rng = np.random.default_rng(0)
    targets = [Target("click", points=Points([centre + rng.integers(-4, 5, 3)], [1])) for _ in range(clicks)]
    local = EngineHost(model=FakeSegVol())
    volume = VolumeInput("ct", ct.volume, ct.ijk_to_ras)
    app = create_app(EngineHost(model=FakeSegVol()), ServerSettings(session_prefix="box1"))
    times: dict[str, list[float]] = {"in process": [], "loopback": [], "nginx": []}
    with tempfile.TemporaryDirectory() as folder, serve_in_thread(app) as url:
        port = int(url.rsplit(":", 1)[1])
        paths = {"in process": None, "loopback": url}
        config = ROOT / "deploy" / "segvol-nginx.conf"
        nginx = run_nginx(config, (port, port), Path(folder)) if nginx_executable() else contextlib.nullcontext()
        with nginx as listen:
            if listen is not None:
                paths["nginx"] = f"http://127.0.0.1:{listen}"
            sessions = {
                name: SegVolClient(where).open_session(ct.volume, ct.ijk_to_ras)
                for name, where in paths.items()
                if where is not None
            }
            local.segment(volume, [targets[0]], zoom_in=False)  # warm: the embedding is cached everywhere
            for session in sessions.values():
                session.segment(targets[0], zoom_in=False)
            runs = [("in process", lambda target: local.segment(volume, [target], zoom_in=False))]
            runs += [
                (name, lambda target, s=session: s.segment(target, zoom_in=False)) for name, session in sessions.items()
            ]
            for n, target in enumerate(targets):  # each path first in turn
                for name, run in runs[n % len(runs) :] + runs[: n % len(runs)]:
                    started = time.perf_counter()
                    run(target)
                    times[name].append(time.perf_counter() - started)
            for session in sessions.values():
                session.close()
    base = median_ms(times["in process"])
    parts = [f"in process {base:.1f} ms"]
    for name in ("loopback", "nginx"):
        if times[name]:
            parts.append(f"{name} +{median_ms(times[name]) - base:.1f} ms (ratio {median_ms(times[name]) / base:.2f})")
    print(f"3. a click (zoom-out only, stand-in), {clicks} each, median: " + ", ".join(parts))
    if not times["nginx"]:
        print("   (nginx is not installed here: no figure through it)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--budget-mb", type=float, default=160.0)
    parser.add_argument("--clicks", type=int, default=30)
    args = parser.parse_args()
    head_limit_cost(args.requests)
    memory_under_load(args.sessions, args.budget_mb)
    click_latency(args.clicks)


if __name__ == "__main__":
    main()
