"""What the SegVol server adds: a click over loopback against the same click in-process, with and without
the request guard (API key, size limits) in the same run, the upload of a 512 x 512 x 300 int16 CT, the memory
an idle session holds, and the clicks per second of two concurrent clients on two model replicas against one.

    python benchmarks/server_benchmark.py [--model standin|synthetic|CKPT] [--device cpu] [--clicks 40]
                                          [--zoom-in] [--sessions 3] [--replicas cpu,cpu]

The server is a real uvicorn on a free port of 127.0.0.1 in this process (so RSS covers both sides). The
model defaults to the test suite's stand-in, which runs the whole pipeline but answers in milliseconds: the
added latency is then the server's alone (transport, JSON, mask packing, thread hand-offs), not hidden in the
model's seconds. With a checkpoint and `--device cuda` it also reports the server-side click and GPU memory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

from SegVolSlicerLib import wire
from SegVolSlicerLib.client import SegVolClient
from SegVolSlicerLib.engine import EngineHost, ModelChoice, VolumeInput
from SegVolSlicerLib.prompts import Points, Target
from SegVolSlicerLib.server import ServerSettings, create_app, serve_in_thread
from SegVolSlicerLib.server.guard import RequestGuard

SHAPE_KJI = (300, 512, 512)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def phantom_ct(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like int16 volume (air, a body of soft tissue with a bright organ, 12 HU noise) and its matrix."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE_KJI), indexing="ij", sparse=True)
    body = ((j - 256) / 200) ** 2 + ((i - 256) / 230) ** 2 <= 1
    organ = ((k - 150) / 60) ** 2 + ((j - 220) / 70) ** 2 + ((i - 180 - seed) / 80) ** 2 <= 1
    volume = np.where(organ, 150, np.where(body, 40, -1000)).astype(np.float32)
    volume += rng.normal(0, 12, SHAPE_KJI).astype(np.float32) * body
    return volume.astype(np.int16), np.diag([0.7, 0.7, 1.5, 1.0])


def build_engine(args, device: str | None = None) -> EngineHost:
    device = device or args.device
    if args.model == "standin":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SegVolSlicer" / "Testing" / "Python"))
        from fake_segvol import FakeSegVol

        return EngineHost(model=FakeSegVol(), max_sessions=args.sessions + 1, memory_budget_mb=64 * 1024)
    if args.model == "synthetic":
        import tempfile

        from SegVolSlicerLib.testing.synthetic_weights import save_checkpoint, synthetic_state_dict

        args.model = str(save_checkpoint(synthetic_state_dict(), Path(tempfile.mkdtemp()) / "SegVol_v1.pth", "pth"))
    return EngineHost(ModelChoice(args.model, device), max_sessions=args.sessions + 1, memory_budget_mb=64 * 1024)


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1000
    return float(np.median(ms)), float(np.percentile(ms, 95))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="standin", help="standin (default), synthetic, or a checkpoint path")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clicks", type=int, default=40)
    parser.add_argument("--zoom-in", action="store_true", help="clicks with zoom-in (default: zoom-out only)")
    parser.add_argument("--sessions", type=int, default=3, help="idle sessions opened for the memory figure")
    parser.add_argument(
        "--replicas", default="cpu,cpu", help="devices of the replica throughput figure (default cpu,cpu)"
    )
    args = parser.parse_args()

    engine = build_engine(args)
    model = engine.model()
    volume, ijk_to_ras = phantom_ct(0)
    print(
        f"CT {SHAPE_KJI[2]}x{SHAPE_KJI[1]}x{SHAPE_KJI[0]} int16 ({volume.nbytes / 2**20:.0f} MB), model "
        f"{args.model} on {model.device}, clicks {'with' if args.zoom_in else 'without'} zoom-in"
    )
    rng = np.random.default_rng(1)
    clicks = [
        Target(
            "click",
            points=Points(
                [[180 + rng.integers(-30, 30), 220 + rng.integers(-30, 30), 150 + rng.integers(-20, 20)]], [1]
            ),
        )
        for _ in range(args.clicks)
    ]

    settings = ServerSettings(max_sessions=args.sessions + 2, api_key="benchmark-key", max_memory_mb=64 * 1024)
    unguarded = create_app(engine, settings)
    unguarded.user_middleware = [m for m in unguarded.user_middleware if m.cls is not RequestGuard]
    with (
        serve_in_thread(create_app(engine, settings), settings) as url,
        serve_in_thread(unguarded, settings) as bare_url,
        SegVolClient(url, settings.api_key) as client,
        SegVolClient(bare_url, settings.api_key) as bare_client,
    ):
        uploads = []
        for _ in range(3):
            start = time.perf_counter()
            session = client.open_session(volume, ijk_to_ras)
            uploads.append(time.perf_counter() - start)
            assert session.uploaded
            session.close()
        with client.open_session(volume, ijk_to_ras) as session, bare_client.open_session(volume, ijk_to_ras) as bare:
            start = time.perf_counter()
            again = client.open_session(volume, ijk_to_ras)
            reconnect = time.perf_counter() - start
            assert not again.uploaded
            again.close()
            frame_mb = len(wire.pack_volume(volume)) / 2**20
            print(
                f"upload (hash, compress to {frame_mb:.0f} MB, send, unpack, verify): median "
                f"{statistics.median(uploads):.2f} s of {', '.join(f'{t:.2f}' for t in uploads)}; "
                f"reconnect with the same volume {reconnect * 1000:.0f} ms (no upload)"
            )

            local = VolumeInput("in-process", volume, ijk_to_ras)
            engine.segment(local, clicks[:1], args.zoom_in)  # preprocessing and embeddings on both sides
            session.segment(clicks[0], args.zoom_in)
            bare.segment(clicks[0], args.zoom_in)
            in_process, remote, unguarded_remote = [], [], []
            for click in clicks:  # interleaved, so that load on the machine hits all three alike
                start = time.perf_counter()
                engine.segment(local, [click], args.zoom_in)
                in_process.append(time.perf_counter() - start)
                start = time.perf_counter()
                bare.segment(click, args.zoom_in)
                unguarded_remote.append(time.perf_counter() - start)
                start = time.perf_counter()
                session.segment(click, args.zoom_in)
                remote.append(time.perf_counter() - start)
            guarded_info, bare_info = [], []
            for _ in range(300):  # one request alone: the guard's own cost, without the click's noise
                for http_client, times in ((bare_client, bare_info), (client, guarded_info)):
                    start = time.perf_counter()
                    http_client.request("GET", "/info")
                    times.append(time.perf_counter() - start)
            (bare_median, bare_p95), (guarded_median, guarded_p95) = percentiles(bare_info), percentiles(guarded_info)
            print(
                f"GET /info without the guard: median {bare_median:.2f} ms, p95 {bare_p95:.2f} ms; with it: "
                f"median {guarded_median:.2f} ms, p95 {guarded_p95:.2f} ms"
            )
            local_median, local_p95 = percentiles(in_process)
            print(f"click in-process: median {local_median:.1f} ms, p95 {local_p95:.1f} ms")
            for name, times in (("server without the guard", unguarded_remote), ("server with the guard", remote)):
                median, p95 = percentiles(times)
                print(
                    f"click via {name}: median {median:.1f} ms, p95 {p95:.1f} ms; added: median "
                    f"{median - local_median:.1f} ms, p95 {p95 - local_p95:.1f} ms"
                )

        engine.forget("in-process")
        if model.device.type == "cuda":
            import torch

            print(f"GPU memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MB peak allocated")
        volumes = [phantom_ct(seed)[0] for seed in range(1, args.sessions + 1)]
        before = _rss_mb()
        sessions = [client.open_session(other, ijk_to_ras) for other in volumes]
        frames_mb = sum(len(session.frame) for session in sessions) / 2**20  # the client's, same process
        uploaded = _rss_mb() - frames_mb
        for session in sessions:
            session.segment(clicks[0], args.zoom_in)
        clicked = _rss_mb() - frames_mb
        print(
            f"server memory per idle session: {(uploaded - before) / args.sessions:.0f} MB after the upload "
            f"(the voxels: {volume.nbytes / 2**20:.0f} MB), {(clicked - before) / args.sessions:.0f} MB once "
            f"segmented (+ the engine's prepared volume and embeddings); {args.sessions} sessions"
        )
        for session in sessions:
            session.close()
    replica_throughput(args, volume, ijk_to_ras, clicks)


def clicking(url, voxels, ijk_to_ras, clicks, args, ready: threading.Barrier) -> None:
    with SegVolClient(url) as client, client.open_session(voxels, ijk_to_ras) as session:
        session.segment(clicks[0], args.zoom_in)  # preprocessing and embeddings first
        ready.wait()
        for click in clicks:
            session.segment(click, args.zoom_in)


def replica_throughput(args, volume: np.ndarray, ijk_to_ras: np.ndarray, clicks: list[Target]) -> None:
    """Two clients clicking at once, each on its own volume: one replica for both, then one each."""
    devices = args.replicas.split(",")
    volumes = [volume, np.roll(volume, 7, axis=2)]
    for engines in ([build_engine(args, devices[0])], [build_engine(args, device) for device in devices]):
        for engine in engines:
            engine.model()
        settings = ServerSettings(max_sessions=4, max_memory_mb=64 * 1024)
        with serve_in_thread(create_app(engines, settings), settings) as url:
            ready = threading.Barrier(len(volumes) + 1)
            threads = [
                threading.Thread(target=clicking, args=(url, v, ijk_to_ras, clicks, args, ready)) for v in volumes
            ]
            for thread in threads:
                thread.start()
            ready.wait()
            start = time.perf_counter()
            for thread in threads:
                thread.join()
            seconds = time.perf_counter() - start
            rate = len(volumes) * len(clicks) / seconds
            print(
                f"{len(volumes)} clients at once on {len(engines)} replica(s) ({', '.join(devices[: len(engines)])}): "
                f"{rate:.1f} clicks/s, {rate / len(engines):.1f} per replica"
            )


if __name__ == "__main__":
    main()
