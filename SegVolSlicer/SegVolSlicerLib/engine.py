"""The engine: the interface every face (the Slicer module, the CLI, the server, the batch runner) runs SegVol
through (`Engine`), and its in-process host (`EngineHost`; client.RemoteEngine is the same over HTTP).

    host = EngineHost(ModelChoice(weights=None, device="auto"))   # weights None: the BAAI/SegVol download
    volume = VolumeInput(key="CT-1", voxels=array_kji, ijk_to_ras=matrix)
    liver, spleen = host.segment(volume, [Target("liver", text="liver"), Target("spleen", text="spleen")])
    key = ("Segmentation_1", "Liver")        # chosen by the face before the run: where the result is kept
    first, = host.segment(volume, [TargetJob(Target("liver", text="liver"), key)])
    clicked = Target("liver", text="liver", points=Points([negative_ijk], [0]))
    fixed, = host.segment(volume, [TargetJob(clicked, key, correct=True, current_mask=segment_now)])

>>> import numpy as np
>>> host = EngineHost(ModelChoice(device="cpu"))      # nothing loads until the first run
>>> volume = VolumeInput("CT-1", np.zeros((8, 8, 8), np.int16), np.eye(4))
>>> host.has_result(volume, ("Segmentation_1", "Liver")), host.memory_bytes
(False, 0)

A bare Target in `segment` is `TargetJob(target)`: the official pipeline, nothing kept (scripts, the CLI).

EngineHost loads the model once per (weights, device, precision), keeps one inference session per volume key
(with its embedding caches) and the last result per (volume, result key), and evicts the least recently used
within its memory budget. A GPU that runs out of memory moves the model to the CPU with a notice and the run
is repeated there. Work on the model runs one request at a time (the GPU is shared); bookkeeping (`forget`,
`forget_results`, `has_result`) may be called from any thread.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol, TypeVar

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


@dataclass(frozen=True)
class TargetJob:
    """One target of a run, as a face asks for it.

    result_key: where the engine keeps this target's result for later corrections, chosen by the face before
      the run (Slicer: (segmentation node ID, segment ID)); None keeps nothing (the CLI, the batch runner). The
      volume is implied: a result is kept per (VolumeInput.key, result_key) and dropped with its volume.
    correct: correct locally (correction.py, a mode beyond the official pipeline) when the engine keeps a
      result for result_key and the run zooms in; otherwise the official pipeline runs.
    current_mask: (K, J, I) the segment as it is now (hand edits included; non-zero inside). A correction
      starts from it: outside the rerun windows its voxels stay bit for bit, inside them the model's answer
      replaces them, and the result's warnings say how many hand-edited voxels were replaced. None: start
      from the kept result.
    """

    target: Target
    result_key: Hashable | None = None
    correct: bool = False
    current_mask: np.ndarray | None = None


class Result(Protocol):
    """What a face reads of a result (inference.SegmentationResult in-process, client.RemoteResult remote);
    statistics and confidence come from clinical/ (the server sends its own)."""

    name: str
    text: str | None  # the text the model was prompted with
    mask: np.ndarray  # (K, J, I) uint8 on the volume's grid
    zoom_out_mask: np.ndarray  # (K, J, I) uint8: the zoom-out pass alone
    warnings: list[str]
    windows: int  # zoom-in windows run
    changed: tuple[slice, slice, slice] | None  # (K, J, I) slices this run may have changed


class Engine(Protocol):
    """The one interface the faces run SegVol through: EngineHost here, client.RemoteEngine on a server."""

    def select(self, choice: ModelChoice) -> None:
        """Use this model choice from the next run on."""

    def segment(
        self,
        volume: VolumeInput,
        jobs: Sequence[TargetJob | Target],
        zoom_in: bool = True,
        reporter: Reporter = NO_REPORT,
    ) -> list[Result]:
        """One result per job, in order; a job with a result_key has its result kept (replacing the old one)."""

    def segment_from_mask(
        self, volume: VolumeInput, job: TargetJob, mask_kji: np.ndarray, reporter: Reporter = NO_REPORT
    ) -> Result:
        """The structure `mask_kji` shows, named job.target.name, segmented from the official evaluation's
        prompts for that label; kept under job.result_key, and a later correction of that key with no box of
        its own keeps the mask's box."""

    def forget(self, key: Hashable) -> None:
        """Drop a volume's session and its kept results."""

    def forget_results(self, result_key_prefix: Hashable) -> None:
        """Drop every kept result whose result_key[0] is the prefix (e.g. a removed segmentation node)."""

    def keep_only(self, keys: Iterable[Hashable]) -> None:
        """Drop the sessions and results of every volume not in `keys`."""

    def forget_if_changed(self, key: Hashable, signature: Hashable) -> None:
        """Drop the volume's session and results if they were made from other voxels or geometry."""

    def session_keys(self) -> list[Hashable]:
        """Keys of the volumes with a session."""

    def has_result(self, volume: VolumeInput, result_key: Hashable) -> bool:
        """Whether a job with this result_key would be corrected locally (the face shows the fast mode)."""

    def close(self) -> None:
        """Drop everything the engine holds."""


@dataclass
class _KeptSession:
    signature: Hashable
    session: SegVolSession


@dataclass
class _KeptResult:
    signature: Hashable  # the volume's, when the result was made
    result: SegmentationResult


def _result_bytes(result: SegmentationResult) -> int:
    arrays = [result.mask, result.zoom_out_mask, result.probabilities]
    if result.zoom_out is not None:
        arrays += [result.zoom_out.mask, result.zoom_out.logits]
    return sum({id(a): a.nbytes for a in arrays if a is not None}.values())


def _heavy_parts_dropped(result: SegmentationResult) -> SegmentationResult | None:
    """The result without its probabilities and zoom-out logits (a correction needs neither; it then gives
    no probabilities), or None if it has none of them."""
    logits = None if result.zoom_out is None else result.zoom_out.logits
    if result.probabilities is None and logits is None:
        return None
    zoom_out = None if result.zoom_out is None else replace(result.zoom_out, logits=None)
    return replace(result, probabilities=None, zoom_out=zoom_out)


def _key_has_prefix(result_key: Hashable, prefix: Hashable) -> bool:
    return result_key == prefix or (isinstance(result_key, tuple) and len(result_key) > 0 and result_key[0] == prefix)


class EngineHost:
    """The Engine in this process: the model, the sessions and the kept results of one face.

    max_sessions: sessions kept. memory_budget_mb: what the sessions (prepared volumes, cached embeddings)
    and the kept results (masks, probabilities, zoom-out logits) hold together. Over it, the least recently
    used sessions go first (the one in use stays even if it alone exceeds the budget), then the oldest kept
    results lose their probabilities and zoom-out logits, then the oldest results go (the newest stays).
    Results go with their volume (forget, keep_only, a changed signature) and with a change of model, not
    when a session is evicted for memory (the next run makes the session again from the same voxels).
    cpu_fallback: on a GPU out-of-memory error, move the model to the CPU and repeat the run there (off: the
    error is raised).
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
        # Kept results by (volume key, result key), least recently stored or used first.
        self._results: OrderedDict[tuple[Hashable, Hashable], _KeptResult] = OrderedDict()
        self._running: VolumeInput | None = None  # the volume of the run in progress (one at a time)
        self._running_dropped = False  # its volume (or the model) was dropped meanwhile: keep nothing of it
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
            self._results.clear()  # so do the results: another model does not correct them
            self._running_dropped = self._running is not None

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
            self._drop_results(lambda vk, rk, kept: vk == volume.key and kept.signature != volume.signature)
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
        """Drop a volume's session and kept results (the volume was removed, or will not be segmented again)."""
        with self._lock:
            self._sessions.pop(key, None)
            self._drop_results(lambda vk, rk, kept: vk == key)
            if key in self._preparing:
                self._forgotten_while_preparing.add(key)
            if self._running is not None and self._running.key == key:
                self._running_dropped = True

    def keep_only(self, keys) -> None:
        """Drop the sessions and results of every volume not in `keys` (e.g. after a scene was closed)."""
        keys = set(keys)
        with self._lock:
            for key in [k for k in self._sessions if k not in keys]:
                del self._sessions[key]
            self._drop_results(lambda vk, rk, kept: vk not in keys)
            self._forgotten_while_preparing |= self._preparing - keys
            if self._running is not None and self._running.key not in keys:
                self._running_dropped = True

    def close(self) -> None:
        """Drop the sessions, the results and the model (a host built around a given model lets it go too)."""
        with self._lock:
            self._sessions.clear()
            self._results.clear()
            self._model = None
            self._forgotten_while_preparing |= self._preparing
            self._running_dropped = self._running is not None

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
        """Drop the key's session and results if they were made from other voxels or geometry (frees their
        memory at once)."""
        with self._lock:
            kept = self._sessions.get(key)
            if kept is not None and kept.signature != signature:
                del self._sessions[key]
            self._drop_results(lambda vk, rk, kept: vk == key and kept.signature != signature)
            if self._running is not None and self._running.key == key and self._running.signature != signature:
                self._running_dropped = True

    # --- kept results ---

    def has_result(self, volume: VolumeInput, result_key: Hashable) -> bool:
        """Whether a result is kept for this volume (its current voxels) and result key."""
        with self._lock:
            kept = self._results.get((volume.key, result_key))
            return kept is not None and kept.signature == volume.signature

    def forget_results(self, result_key_prefix: Hashable) -> None:
        """Drop every kept result, of any volume, whose result key is the prefix or a tuple starting with it."""
        with self._lock:
            self._drop_results(lambda vk, rk, kept: _key_has_prefix(rk, result_key_prefix))

    def _kept_result(self, volume: VolumeInput, result_key: Hashable) -> SegmentationResult | None:
        with self._lock:
            kept = self._results.get((volume.key, result_key))
            if kept is None or kept.signature != volume.signature:
                return None
            self._results.move_to_end((volume.key, result_key))
            return kept.result

    def _keep(self, volume: VolumeInput, keyed: Sequence[tuple[Hashable | None, SegmentationResult]]) -> None:
        """Keep the run's results under their result keys, unless the volume was dropped while it ran."""
        with self._lock:
            if self._running_dropped:
                return
            stored = []
            for result_key, result in keyed:
                if result_key is not None:
                    self._results.pop((volume.key, result_key), None)
                    self._results[(volume.key, result_key)] = _KeptResult(volume.signature, result)
                    stored.append((volume.key, result_key))
            if stored:
                self._evict(keep=volume.key, keep_results=set(stored))

    def _drop_results(self, drops: Callable[[Hashable, Hashable, _KeptResult], bool]) -> None:
        for key in [key for key, kept in self._results.items() if drops(*key, kept)]:
            del self._results[key]

    # --- memory ---

    @property
    def memory_bytes(self) -> int:
        """Memory the kept sessions (prepared volumes and cached embeddings) and kept results hold."""
        with self._lock:
            return self._session_bytes() + self._results_bytes()

    @property
    def results_bytes(self) -> int:
        """Memory the kept results hold (masks, probabilities, zoom-out logits)."""
        with self._lock:
            return self._results_bytes()

    def _session_bytes(self) -> int:
        return sum(kept.session.memory_bytes for kept in self._sessions.values())

    def _results_bytes(self) -> int:
        return sum(_result_bytes(kept.result) for kept in self._results.values())

    def _evict(self, keep: Hashable, keep_results: set = frozenset()) -> None:
        """Sessions (not `keep`'s) least recently used first, then the heavy parts of results and then results,
        oldest first (never those in `keep_results`, nor the newest)."""

        def over() -> bool:
            return self._session_bytes() + self._results_bytes() > self.memory_budget_bytes

        while len(self._sessions) > 1 and (len(self._sessions) > self.max_sessions or over()):
            oldest = next(k for k in self._sessions if k != keep)
            del self._sessions[oldest]
        evictable = [key for key in list(self._results)[:-1] if key not in keep_results]
        for key in evictable:
            if not over():
                return
            lighter = _heavy_parts_dropped(self._results[key].result)
            if lighter is not None:
                self._results[key] = replace(self._results[key], result=lighter)
        for key in evictable:
            if not over():
                return
            del self._results[key]

    # --- running ---

    def run(self, volume: VolumeInput, work: Callable[[SegVolSession], T], reporter: Reporter = NO_REPORT) -> T:
        """`work(session)` on the volume's session, one request at a time; on a GPU out of memory the model
        moves to the CPU (with a notice) and `work` runs again there."""
        with self._run_lock:
            with self._lock:
                self._running, self._running_dropped = volume, False
            try:
                return self._run(volume, work, reporter)
            finally:
                with self._lock:
                    self._running = None

    def _run(self, volume: VolumeInput, work: Callable[[SegVolSession], T], reporter: Reporter) -> T:
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
        self,
        volume: VolumeInput,
        jobs: Sequence[TargetJob | Target],
        zoom_in: bool = True,
        reporter: Reporter = NO_REPORT,
    ) -> list[SegmentationResult]:
        """One result per job, in order; all share the volume's embeddings. A job that asks to correct a kept
        result is corrected locally (when the run zooms in); every other job runs the official pipeline. Jobs
        with a result_key have their results kept. A bare Target is TargetJob(target)."""
        jobs = [job if isinstance(job, TargetJob) else TargetJob(job) for job in jobs]
        # Looked up before the run: making the session may evict within the budget, never what this run uses.
        previous = [self._kept_result(volume, job.result_key) if job.correct and zoom_in else None for job in jobs]

        def work(session: SegVolSession) -> list[SegmentationResult]:
            results = []
            for index, (job, kept) in enumerate(zip(jobs, previous)):
                reporter.progress("target", index, len(jobs))
                if kept is None:
                    results.append(session.segment(job.target, zoom_in, reporter))
                else:
                    results.append(session.refine(kept, job.target, reporter, job.current_mask))
            return results

        results = self.run(volume, work, reporter)
        self._keep(volume, [(job.result_key, result) for job, result in zip(jobs, results)])
        return results

    def segment_from_mask(
        self, volume: VolumeInput, job: TargetJob, mask_kji: np.ndarray, reporter: Reporter = NO_REPORT
    ) -> SegmentationResult:
        """A segment made elsewhere (by hand, another tool), named job.target.name, segmented again from the
        prompts the official evaluation derives from a label (inference/from_mask.py) and kept under
        job.result_key, so that clicks then correct it; a correction that gives no box keeps the mask's."""
        result = self.run(
            volume, lambda session: session.segment_from_mask(job.target.name, mask_kji, reporter), reporter
        )
        self._keep(volume, [(job.result_key, result)])
        return result

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
