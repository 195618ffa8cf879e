"""The engine host: one place that runs SegVol for every face (the Slicer module, the CLI, the server, the
batch runner).

    host = EngineHost(weights=None, device="auto", precision="auto")      # weights: None = BAAI/SegVol
    volume = VolumeInput(key="CT-1", voxels=array_kji, ijk_to_ras=matrix)
    liver, spleen = host.segment(volume, [Target("liver", text="liver"), Target("spleen", text="spleen")])

It loads the model once per (weights, device, precision), keeps one inference session per volume key (with
its embedding caches) and evicts the least recently used sessions by count and by memory. A GPU that runs out
of memory moves the model to the CPU with a notice and the run is repeated there. Work on the model runs one
request at a time (the GPU is shared); session bookkeeping (`forget`) may be called from any thread.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from . import runtime
from .prompts import Target
from .reporting import NO_REPORT, Reporter

if TYPE_CHECKING:  # torch is imported on first use: Slicer imports this before torch is installed
    from .inference.session import SegmentationResult, SegVolSession

T = TypeVar("T")


@dataclass(frozen=True)
class ModelChoice:
    """Which model to run: weights (None: the BAAI/SegVol download), device and image-encoder precision."""

    weights: str | None = None
    device: str = "auto"
    precision: str = "auto"
    cache_dir: str | None = None  # where downloaded weights go (default: $SEGVOL_HOME or ~/.cache/segvol)

    def __post_init__(self):
        runtime.check_device_name(self.device)
        runtime.check_precision_name(self.precision)


@dataclass(frozen=True)
class VolumeInput:
    """A volume as the engine takes it. `key` names it for the caller (a Slicer node ID, a file, a server
    session); `signature` changes when its voxels or geometry change, which makes a new session."""

    key: Hashable
    voxels: np.ndarray  # (K, J, I) as slicer.util.arrayFromVolume gives it
    ijk_to_ras: np.ndarray  # 4x4
    signature: Hashable = None


@dataclass(frozen=True)
class SessionOptions:
    """How sessions are made: embedding cache per session, zoom-in click sampling, whether results carry
    their probabilities (see SegVolSession)."""

    cache_budget_mb: float = 1024
    point_sampling: str = "seeded"
    seed: int = 0
    probabilities: bool = False


@dataclass
class _KeptSession:
    signature: Hashable
    session: SegVolSession


class EngineHost:
    """The model and the sessions of one face.

    max_sessions / memory_budget_mb: sessions kept (least recently used go first; the one in use is kept even
    if it alone exceeds the budget). cpu_fallback: on a GPU out-of-memory error, move the model to the CPU
    and repeat the run there (off: the error is raised).
    """

    def __init__(
        self,
        choice: ModelChoice | None = None,
        *,
        model=None,
        max_sessions: int = 2,
        memory_budget_mb: float = 4096,
        session_options: SessionOptions | None = None,
        cpu_fallback: bool = True,
    ):
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.choice = choice or ModelChoice()
        self.max_sessions, self.memory_budget_bytes = int(max_sessions), int(memory_budget_mb * 2**20)
        self.session_options = session_options or SessionOptions()
        self.cpu_fallback = cpu_fallback
        self._model, self._given_model = model, model is not None
        self._on_cpu_after_fallback = False
        self.weights_path = None  # where the loaded model's weights came from (a file or a snapshot folder)
        self._sessions: OrderedDict[Hashable, _KeptSession] = OrderedDict()
        # Keys whose session is being made (outside the lock), and those of them forgotten meanwhile.
        self._preparing: set[Hashable] = set()
        self._forgotten_while_preparing: set[Hashable] = set()
        self._lock = threading.RLock()  # the model reference and the session table
        self._run_lock = threading.Lock()  # one request at a time on the model

    # --- the model ---

    def select(self, choice: ModelChoice) -> None:
        """Use another model choice from the next run on (a host built around a given model keeps it)."""
        with self._lock:
            if self._given_model or choice == self.choice:
                return
            self.choice, self._model, self._on_cpu_after_fallback = choice, None, False
            self._sessions.clear()  # embeddings belong to the previous model

    def model(self, reporter: Reporter = NO_REPORT):
        """The loaded model, loading it (and downloading the weights) on first use."""
        with self._lock:
            if self._model is not None:
                return self._model
            choice, device = self.choice, "cpu" if self._on_cpu_after_fallback else self.choice.device
        from .model import load_segvol
        from .weights import resolve_weights

        def progress(stage, done, total):  # Cancel stops a download between two chunks; the hub resumes it
            reporter.check_cancelled()
            reporter.progress(stage, done, total)

        path = resolve_weights(choice.weights, choice.cache_dir, progress=progress)
        reporter.progress("load", 0, 1)
        reporter.check_cancelled()
        model = load_segvol(path, device=device, precision=self._precision_on(device))
        reporter.progress("load", 1, 1)
        reporter.check_cancelled()
        with self._lock:
            if self.choice == choice:
                self._model, self.weights_path = model, path
        return model

    @property
    def loaded_model(self):
        """The model if it is loaded, else None."""
        with self._lock:
            return self._model

    # --- sessions ---

    def session(self, volume: VolumeInput, reporter: Reporter = NO_REPORT) -> SegVolSession:
        """The volume's session with the current model: the kept one, or a new one (preprocessing only)."""
        from .inference.session import SegVolSession

        model = self.model(reporter)
        with self._lock:
            kept = self._sessions.get(volume.key)
            if kept is not None and kept.signature == volume.signature and kept.session.model is model:
                self._sessions.move_to_end(volume.key)
                return kept.session
            self._sessions.pop(volume.key, None)
            self._preparing.add(volume.key)
        options = self.session_options
        try:
            session = SegVolSession(
                model,
                volume.voxels,
                volume.ijk_to_ras,
                cache_budget_mb=options.cache_budget_mb,
                point_sampling=options.point_sampling,
                seed=options.seed,
                reporter=reporter,
                keep_probabilities=options.probabilities,
            )
        finally:
            with self._lock:
                self._preparing.discard(volume.key)
                forgotten = volume.key in self._forgotten_while_preparing
                self._forgotten_while_preparing.discard(volume.key)
        with self._lock:
            if not forgotten:  # a volume dropped while it was prepared is used for this run only
                self._sessions[volume.key] = _KeptSession(volume.signature, session)
                self._evict(keep=volume.key)
        return session

    def forget(self, key: Hashable) -> None:
        """Drop a volume's session (the volume was removed, or will not be segmented again)."""
        with self._lock:
            self._sessions.pop(key, None)
            if key in self._preparing:
                self._forgotten_while_preparing.add(key)

    def keep_only(self, keys) -> None:
        """Drop the sessions of every volume not in `keys` (e.g. after a scene was closed)."""
        keys = set(keys)
        with self._lock:
            for key in [k for k in self._sessions if k not in keys]:
                del self._sessions[key]
            self._forgotten_while_preparing |= self._preparing - keys

    def close(self) -> None:
        """Drop the sessions and the model (a host built around a given model lets it go too)."""
        with self._lock:
            self._sessions.clear()
            self._model = None
            self._forgotten_while_preparing |= self._preparing

    def session_keys(self) -> list[Hashable]:
        """Keys of the kept sessions, least recently used first."""
        with self._lock:
            return list(self._sessions)

    def kept_session(self, key: Hashable) -> SegVolSession | None:
        """The session kept for this key, or None."""
        with self._lock:
            kept = self._sessions.get(key)
            return kept.session if kept is not None else None

    def forget_if_changed(self, key: Hashable, signature: Hashable) -> None:
        """Drop the key's session if it was made from other voxels or geometry (frees its memory at once)."""
        with self._lock:
            kept = self._sessions.get(key)
            if kept is not None and kept.signature != signature:
                del self._sessions[key]

    @property
    def memory_bytes(self) -> int:
        """Memory the kept sessions hold (prepared volumes and cached embeddings)."""
        with self._lock:
            return sum(kept.session.memory_bytes for kept in self._sessions.values())

    def _evict(self, keep: Hashable) -> None:
        while len(self._sessions) > 1 and (
            len(self._sessions) > self.max_sessions or self.memory_bytes > self.memory_budget_bytes
        ):
            oldest = next(k for k in self._sessions if k != keep)
            del self._sessions[oldest]

    # --- running ---

    def run(self, volume: VolumeInput, work: Callable[[SegVolSession], T], reporter: Reporter = NO_REPORT) -> T:
        """`work(session)` on the volume's session, one request at a time; on a GPU out of memory the model
        moves to the CPU (with a notice) and `work` runs again there."""
        with self._run_lock:
            try:
                result = work(self.session(volume, reporter))
            except Exception as error:
                if not self._falls_back(error):
                    raise
            else:
                self._evict_after_run(volume.key)
                return result
            reporter.notice(self._move_model_to_cpu())
            result = work(self.session(volume, reporter))
            self._evict_after_run(volume.key)
            return result

    def segment(
        self, volume: VolumeInput, targets: Sequence[Target], zoom_in: bool = True, reporter: Reporter = NO_REPORT
    ) -> list[SegmentationResult]:
        """One result per target, in order; all targets share the volume's embeddings."""
        return self.run(volume, lambda session: session.segment_many(targets, zoom_in, reporter), reporter)

    def refine(
        self, volume: VolumeInput, previous: SegmentationResult, target: Target, reporter: Reporter = NO_REPORT
    ) -> SegmentationResult:
        """`previous` corrected around `target`'s new clicks (SegVolSession.refine: a mode beyond the official
        pipeline, which it falls back to with a note when the clicks leave the previous zoom-in region)."""
        return self.run(volume, lambda session: session.refine(previous, target, reporter), reporter)

    def segment_from_mask(
        self, volume: VolumeInput, name: str, mask_kji: np.ndarray, reporter: Reporter = NO_REPORT
    ) -> SegmentationResult:
        """A segment made elsewhere (by hand, another tool) segmented again from the prompts the official
        evaluation derives from a label, so that clicks then correct it (from_mask.py)."""
        from .from_mask import segment_from_mask

        return self.run(volume, lambda session: segment_from_mask(session, name, mask_kji, reporter), reporter)

    def _evict_after_run(self, key: Hashable) -> None:
        with self._lock:  # a run fills the session's caches: the memory budget is checked again
            if key in self._sessions:
                self._evict(keep=key)

    def _precision_on(self, device: str) -> str:
        # A GPU's fp16 (or its "auto" choice) does not suit a CPU: there "auto" decides again.
        return "auto" if device == "cpu" and self.choice.precision == "fp16" else self.choice.precision

    def _falls_back(self, error: Exception) -> bool:
        """A GPU out of memory (while loading the model, too) and the CPU not yet tried."""
        if not (self.cpu_fallback and runtime.is_out_of_memory(error)):
            return False
        with self._lock:
            if self._model is not None:
                return self._model.device.type != "cpu"
            return not self._on_cpu_after_fallback and self.choice.device != "cpu"

    def _move_model_to_cpu(self) -> str:
        """Later runs use the CPU, until another model choice is selected."""
        with self._lock:
            model = self._model
            device = model.device if model is not None else self.choice.device
            self._sessions.clear()  # their cached embeddings live on the GPU
            self._on_cpu_after_fallback = True
        if model is not None:  # seconds for 0.7 GB: outside the table lock (runs hold _run_lock meanwhile)
            model.to("cpu")
            model.set_precision(self._precision_on("cpu"))
        runtime.release_device_memory()
        return runtime.fallback_message(device)
