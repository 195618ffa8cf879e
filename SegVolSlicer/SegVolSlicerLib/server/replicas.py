"""One model per device: `segvol serve --device cuda:0 --device cuda:1` (or `cuda:all`) holds one engine
host per device, each with its own worker thread, so requests on different devices run in parallel. A new
session goes to the least-loaded device and stays there: its embeddings live on that device."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from ..engine import EngineHost
from ..errors import InputError


def expand_devices(names: list[str]) -> list[str]:
    """The devices named, `cuda:all` standing for every visible GPU."""
    if "cuda:all" not in names:
        return list(names)
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise InputError("--device cuda:all: no CUDA GPU is usable here; use --device cpu")
    gpus = [f"cuda:{index}" for index in range(count)]
    return [device for name in names for device in (gpus if name == "cuda:all" else [name])]


@dataclass
class Replica:
    """One engine (one model on one device), its worker thread, and its load."""

    engine: EngineHost
    worker: ThreadPoolExecutor
    sessions: int = 0
    jobs: int = 0  # queued or running
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def device(self) -> str:
        model = self.engine.loaded_model
        return str(model.device) if model is not None else self.engine.choice.device

    def submit(self, work, *args) -> Future:
        with self.lock:
            self.jobs += 1
        future = self.worker.submit(work, *args)
        future.add_done_callback(self._job_ended)
        return future

    def _job_ended(self, _future: Future) -> None:
        with self.lock:
            self.jobs -= 1


class Replicas:
    def __init__(self, engines: list[EngineHost]):
        if not engines:
            raise ValueError("a server needs at least one engine")
        self.all = [
            Replica(engine, ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"segvol-model-{index}"))
            for index, engine in enumerate(engines)
        ]
        self.lock = threading.Lock()

    def place(self) -> Replica:
        """The least-loaded replica (fewest sessions, then fewest jobs; the first on a tie), one session more."""
        with self.lock:
            replica = min(self.all, key=lambda r: (r.sessions, r.jobs))
            replica.sessions += 1
            return replica

    def release(self, replica: Replica) -> None:
        with self.lock:
            replica.sessions -= 1

    def memory_bytes(self) -> int:
        return sum(replica.engine.memory_bytes for replica in self.all)

    def load(self) -> list[dict]:
        with self.lock:
            return [{"device": r.device, "sessions": r.sessions, "jobs": r.jobs} for r in self.all]

    def shutdown(self) -> None:
        for replica in self.all:
            replica.worker.shutdown(wait=True, cancel_futures=True)
