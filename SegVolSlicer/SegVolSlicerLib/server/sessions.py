"""Sessions, their jobs and the memory they hold: the server's state, behind the HTTP layer (app.py)."""

from __future__ import annotations

import hmac
import logging
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from .. import __version__, wire
from ..clinical.statistics import result_statistics
from ..engine import EngineHost, TargetJob, VolumeInput
from ..errors import Cancelled, InputError, SegVolError
from ..volume_checks import check_volume
from .jobs import Job
from .models import JobRequest, SessionRequest, TargetBody
from .replicas import Replica, Replicas
from .serving import weights_name
from .settings import Problem, ServerSettings

log = logging.getLogger("segvol.server")

JOBS_KEPT = 4  # finished jobs kept per session, for their masks
# What an engine session holds per voxel of its volume at least: the prepared float32 image. The room the
# memory budget keeps for the sessions the engines run (their embedding caches are evicted to fit).
ENGINE_BYTES_PER_VOXEL = 4
# What a job's result holds per voxel at most: final and zoom-out masks, float32 probabilities (the room a
# device's running job needs besides its engine session).
RESULT_BYTES_PER_VOXEL = 6
# Each engine session's embedding cache gets at most this share of the budget (per device).
CACHE_SHARE = 0.25
REUSE_SAMPLES = 4096  # voxels a reuse proof covers (wire.voxel_proof): its cost does not grow with the volume


def unknown_session() -> Problem:
    return Problem(
        404,
        "unknown-session",
        "unknown or expired session (sessions end after the server's idle timeout): open a new session",
    )


@dataclass
class Session:
    id: str
    shape: tuple[int, int, int]
    dtype: str
    ijk_to_ras: np.ndarray
    sha256: str
    nonce: bytes  # keys the proof that a client holds the voxels it asks to reuse
    replica: Replica
    opened: float
    last_seen: float
    voxels: np.ndarray | None = None
    upload_bytes: int = 0  # the frame of the upload in progress (one at a time), reserved in the budget
    uploading: bool = False
    reuse_tried: bool = False
    jobs: OrderedDict[str, Job] = field(default_factory=OrderedDict)

    @property
    def masks_bytes(self) -> int:
        """The packed masks of the jobs kept for their /masks request."""
        return sum(len(job.masks) for job in self.jobs.values())

    @property
    def busy(self) -> bool:
        return any(not job.finished for job in self.jobs.values())

    @property
    def declared_bytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def result_key(self, key: str) -> tuple[str, str]:
        """The engine's key of a result this session keeps: a client's key never reaches another session's."""
        return (self.id, key)

    def volume(self) -> VolumeInput:
        # The signature: a new upload (new content) or geometry makes a new engine session.
        return VolumeInput(self.id, self.voxels, self.ijk_to_ras, (self.sha256, self.ijk_to_ras.tobytes()))


def check_geometry(ijk_to_ras: np.ndarray) -> None:
    """A usable IJK-to-RAS matrix: an affine last row, voxel spacings of 1 µm to 1 m, and a direction part
    that is not degenerate (so its determinant, the voxel volume, is finite and nonzero)."""
    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    affine = np.array_equal(ijk_to_ras[3], [0.0, 0.0, 0.0, 1.0])
    sane = affine and bool(np.all((spacing >= 1e-3) & (spacing <= 1e3))) and np.all(np.abs(ijk_to_ras[:3, 3]) <= 1e7)
    if sane:  # the determinant relative to the spacings: 1 for orthogonal axes, 0 for collinear ones
        sane = abs(np.linalg.det(ijk_to_ras[:3, :3] / spacing)) > 1e-6
    if not sane:
        raise Problem(
            422,
            "bad-geometry",
            "ijk_to_ras must be a 4x4 affine matrix (last row 0 0 0 1) with voxel spacings of 0.001 to 1000 mm, "
            "independent axes and an origin within 10 km: send the volume's real geometry",
        )


class SegVolServer:
    """Sessions, jobs and the workers of the engines (one per device); the HTTP layer only translates.

    One memory budget (settings.max_memory_bytes) covers all it keeps: voxels, volumes awaited, uploads in
    flight, the engines' sessions (prepared images and embedding caches), results kept for corrections and
    the masks of finished jobs. The engines keep their sessions and the results (per server session and result
    key) within what the rest leaves (EngineHost.fit_memory_budget): when something new needs room, the
    engine sessions of other volumes go first, then the oldest results' probabilities and zoom-out logits,
    then the oldest results, across server sessions."""

    def __init__(
        self,
        engines: list[EngineHost],
        settings: ServerSettings,
        clock: Callable[[], float] = time.monotonic,
        weights: dict | None = None,
    ):
        self.replicas, self.settings, self.clock = Replicas(engines), settings, clock
        choice = engines[0].choice
        self.weights = weights or {"name": weights_name(choice.weights), "sha256": None}
        self.sessions: dict[str, Session] = {}
        self.lock = threading.Lock()
        cache_mb = CACHE_SHARE * settings.max_memory_bytes / len(engines) / 2**20
        for engine in engines:  # each engine session's embedding cache fits the budget's share of it
            options = engine.session_options
            engine.session_options = replace(options, cache_budget_mb=min(options.cache_budget_mb, cache_mb))

    # --- sessions ---

    def open_session(self, request: SessionRequest) -> Session:
        shape = tuple(request.shape)
        if max(shape) > self.settings.max_dimension:
            raise Problem(
                413,
                "volume-too-large",
                f"volume of {shape[2]} x {shape[1]} x {shape[0]} voxels: each dimension must be 1 to "
                f"{self.settings.max_dimension} on this server",
            )
        if math.prod(shape) > self.settings.max_voxels:
            raise Problem(
                413,
                "volume-too-large",
                f"volume of {math.prod(shape)} voxels: this server takes at most "
                f"{self.settings.max_voxels}; crop or resample it first",
            )
        ijk_to_ras = np.asarray(request.ijk_to_ras, dtype=np.float64)  # 4 x 4 finite numbers (the model says)
        check_geometry(ijk_to_ras)
        self.reap()
        with self.lock:
            if len(self.sessions) >= self.settings.max_sessions:
                raise self._busy(f"all {self.settings.max_sessions} sessions are in use")
            self._check_memory(shape, request.dtype)
            now = self.clock()
            prefix = self.settings.session_prefix
            session = Session(
                f"{prefix}-{secrets.token_urlsafe(24)}" if prefix else secrets.token_urlsafe(24),
                shape,
                request.dtype,
                ijk_to_ras,
                request.sha256,
                secrets.token_bytes(32),
                self.replicas.place(),
                opened=now,
                last_seen=now,
            )
            self.sessions[session.id] = session
        return session

    def _check_memory(self, shape: tuple[int, int, int], dtype: str) -> None:
        """With `lock` held: refuses a volume that would take the server past its memory budget, counting what
        the server holds and the room the engines need to run the largest volumes (what is kept for speed
        only, the results and engine sessions of others, gives way)."""
        budget = self.settings.max_memory_bytes
        voxels = math.prod(shape)
        needed = voxels * np.dtype(dtype).itemsize
        alone = needed + (ENGINE_BYTES_PER_VOXEL + RESULT_BYTES_PER_VOXEL) * voxels
        if alone > budget:
            raise Problem(
                413,
                "over-memory-budget",
                f"a volume of {shape[2]} x {shape[1]} x {shape[0]} {dtype} voxels needs {alone / 2**20:.0f} MB: "
                f"this server holds at most {budget / 2**20:.0f} MB for its clients; crop or resample it first",
            )
        sizes = sorted([math.prod(s.shape) for s in self.sessions.values()] + [voxels], reverse=True)
        # each device runs one job at a time: its engine session and that job's result
        engines_room = (ENGINE_BYTES_PER_VOXEL + RESULT_BYTES_PER_VOXEL) * sum(sizes[: len(self.replicas.all)])
        if self._volumes_bytes() + needed + engines_room > budget:
            raise self._busy(f"its memory ({budget / 2**20:.0f} MB for clients) is taken by other volumes")

    def _volumes_bytes(self) -> int:
        """With `lock` held: what cannot give way: the voxels the sessions hold (shared ones once) or await,
        and the uploads in flight."""
        held = {id(s.voxels): s.voxels.nbytes for s in self.sessions.values() if s.voxels is not None}
        awaited = sum(s.declared_bytes for s in self.sessions.values() if s.voxels is None)
        flight = sum(s.upload_bytes for s in self.sessions.values())
        return sum(held.values()) + awaited + flight

    def _kept_bytes(self) -> int:
        """With `lock` held: the masks of finished jobs, kept for their /masks request."""
        return sum(s.masks_bytes for s in self.sessions.values())

    def memory_bytes(self) -> int:
        """With `lock` held: everything the server holds for its clients."""
        return self._volumes_bytes() + self._kept_bytes() + self.replicas.memory_bytes()

    def _make_room(self, needed: int) -> bool:
        """With `lock` held: the engines fit what the rest of the budget leaves, less `needed` more bytes (each
        engine an equal share; they evict their oldest kept things); False if the bytes still do not fit."""
        budget, engines = self.settings.max_memory_bytes, [replica.engine for replica in self.replicas.all]
        room = budget - self._volumes_bytes() - self._kept_bytes() - needed
        for engine in engines:
            engine.fit_memory_budget(max(0, room // len(engines)))
        return self.memory_bytes() + needed <= budget

    def _busy(self, why: str) -> Problem:
        wait = self._seconds_until_a_session_frees()
        return Problem(
            503,
            "server-busy",
            f"the server is busy: {why}; try again in {wait} s",
            {"Retry-After": str(wait)},
        )

    def _seconds_until_a_session_frees(self) -> int:
        idle = [s.last_seen for s in self.sessions.values() if not s.busy]
        if not idle:
            return max(1, math.ceil(self.settings.idle_timeout_s))
        return max(1, math.ceil(min(idle) + self.settings.idle_timeout_s - self.clock()))

    def session(self, session_id: str) -> Session:
        """The live session (its lease renewed), or 404."""
        self.reap()
        with self.lock:
            session = self.sessions.get(session_id)
            if session is None:
                raise unknown_session()
            session.last_seen = self.clock()
            return session

    def reuse(self, session: Session, proof: str) -> bool:
        """Lends the session the voxels of a live session with the same frame, if the client proves it holds
        them (wire.voxel_proof with this session's nonce): a hash alone, which others may have seen, gets
        nothing. The proof covers REUSE_SAMPLES voxels drawn by the nonce, so its cost does not grow with the
        volume. What the answer tells (README): a client that holds a volume's voxels learns whether a live
        session here holds the same volume. One try per session."""
        with self.lock:
            if session.voxels is not None or session.reuse_tried or session.uploading:
                raise Problem(409, "reuse-tried", "this session already has its volume or tried to reuse one")
            session.reuse_tried = True
            content = (session.sha256, session.shape, session.dtype)
            held = (s for s in self.sessions.values() if s.voxels is not None)
            twin = next((s.voxels for s in held if (s.sha256, s.shape, s.dtype) == content), None)
        # As much work without a twin as with one: the answer's time tells nothing either.
        source = twin if twin is not None else np.broadcast_to(np.zeros((), session.dtype), session.shape)
        expected = wire.voxel_proof(session.nonce, source, REUSE_SAMPLES)
        if twin is None or not hmac.compare_digest(expected, proof):
            return False
        with self.lock:
            session.voxels = twin
        return True

    def begin_upload(self, session: Session, length: int) -> None:
        """Reserves the upload's frame in the budget; one upload at a time per session."""
        with self.lock:
            if session.uploading:
                raise Problem(409, "upload-in-progress", "this session is already receiving its volume")
            if session.voxels is not None:
                raise Problem(409, "volume-present", "this session already has its volume: open a new session")
            if not self._make_room(length):
                raise self._busy("its memory is taken by the volumes of other sessions")
            session.uploading, session.upload_bytes = True, length

    def end_upload(self, session: Session) -> None:
        with self.lock:
            session.uploading, session.upload_bytes = False, 0
            session.last_seen = self.clock()

    def upload(self, session: Session, frame: bytearray, sha256: str) -> None:
        """The volume from its frame, whose sha256 was computed as it streamed in."""
        if sha256 != session.sha256:
            raise InputError(
                "the upload does not match the session's sha256: upload the volume the session was opened with"
            )
        voxels = wire.unpack_volume(frame, session.shape, session.dtype)
        check_volume(voxels)
        voxels.setflags(write=False)  # shared by sessions with the same content
        with self.lock:
            session.voxels = voxels

    def close(self, session_id: str) -> None:
        with self.lock:
            session = self.sessions.pop(session_id, None)
        if session is None:
            raise unknown_session()
        self._release(session)

    def reap(self) -> list[str]:
        """End the sessions idle for longer than the idle timeout, and those that never received their volume
        within the upload grace (never one with a job queued or running, or an upload streaming in)."""
        now, limits = self.clock(), self.settings
        with self.lock:
            expired = [
                s
                for s in self.sessions.values()
                if not s.busy
                and not s.uploading
                and (
                    now - s.last_seen > limits.idle_timeout_s
                    or (s.voxels is None and now - s.opened > limits.upload_grace_s)
                )
            ]
            for session in expired:
                del self.sessions[session.id]
        for session in expired:
            if session.voxels is None:
                log.info("a session that never received its volume ended after %.0f s", now - session.opened)
            else:
                log.info("a session ended after %.0f s idle", now - session.last_seen)
            self._release(session)
        return [session.id for session in expired]

    def _release(self, session: Session) -> None:
        for job in session.jobs.values():
            job.reporter.cancel.set()
        session.replica.engine.forget(session.id)  # its engine session and its kept results
        self.replicas.release(session.replica)

    # --- results kept for corrections ---

    def forget_results(self, session: Session, result_key: str) -> None:
        session.replica.engine.forget_results(session.result_key(result_key))

    # --- jobs ---

    def submit(self, session: Session, request: JobRequest) -> Job:
        if session.voxels is None:
            raise Problem(409, "volume-missing", "the session has no volume yet: upload it first")
        if session.busy:
            raise Problem(409, "session-busy", "the session is already running a job: wait for it or cancel it")
        targets = [self._target_job(body, session) for body in self._checked_sizes(request.targets)]
        job = Job(secrets.token_urlsafe(12), targets, request.zoom_in)
        with self.lock:
            session.jobs[job.id] = job
            while len(session.jobs) > JOBS_KEPT:
                session.jobs.popitem(last=False)
        session.replica.submit(self._run, session, job)
        return job

    def _checked_sizes(self, targets: list[TargetBody]) -> list[TargetBody]:
        limits = self.settings
        if len(targets) > limits.max_targets:
            raise InputError(f"{len(targets)} targets in one request: this server takes at most {limits.max_targets}")
        for body in targets:
            if max(len(body.name), len(body.text or "")) > limits.max_text_chars:
                raise InputError(
                    f"target {body.name[:40]!r}: names and texts may have at most {limits.max_text_chars} characters"
                )
            if body.points is not None and len(body.points.ijk) > limits.max_points:
                raise InputError(
                    f"target {body.name!r} has {len(body.points.ijk)} points: this server takes at most "
                    f"{limits.max_points} per target"
                )
        return targets

    @staticmethod
    def _target_job(body: TargetBody, session: Session) -> TargetJob:
        shape, target = session.shape, wire.target_from_json(body.model_dump())
        if target.points is not None:
            target.points.check_inside(shape)
        if target.box is not None:
            target.box.clipped(shape)  # refuses a box beside the volume; the engine clips one that overlaps it
        current = None if body.current_mask is None else wire.mask_from_json(body.current_mask.model_dump(), shape)
        key = None if body.result_key is None else session.result_key(body.result_key)
        return TargetJob(target, key, body.correct, current)

    def _run(self, session: Session, job: Job) -> None:
        reporter, engine = job.reporter, session.replica.engine
        if reporter.cancel.is_set():
            job.finish("cancelled", error="segmentation cancelled", error_code="cancelled")
            return
        job.finish("running")
        try:
            with self.lock:  # the engine gets what the rest of the budget leaves
                self._make_room(0)
            results = engine.segment(session.volume(), job.targets, job.zoom_in, job.reporter)
            packed, blobs, offset = [], [], 0
            for result in results:
                entry = {
                    "name": result.name,
                    "text": result.text,
                    "warnings": list(result.warnings),
                    "windows": result.windows,
                    "changed": [[int(s.start), int(s.stop)] for s in result.changed],
                    "statistics": result_statistics(result, session.voxels, session.ijk_to_ras).row(),
                }
                masks, bits = wire.pack_result_masks(result, offset)
                entry.update(masks)
                blobs += bits
                offset += sum(len(b) for b in bits)
                packed.append(entry)
        except Cancelled as error:
            job.finish("cancelled", error=str(error), error_code="cancelled")
        except SegVolError as error:
            job.finish("failed", error=str(error), error_code="input")
        except Exception as error:  # the server keeps serving; the client gets one line, the log the traceback
            log.exception("a job failed")
            job.finish("failed", error=f"the server failed: {type(error).__name__}: {error}", error_code="internal")
        else:
            with self.lock:
                job.masks = b"".join(blobs)
                self._make_room(0)
            job.finish("done", results=packed)
        finally:
            with self.lock:
                gone = session.id not in self.sessions
            if gone:  # closed or reaped while it ran: the engine session it made goes too
                engine.forget(session.id)

    def job(self, session: Session, job_id: str) -> Job:
        with self.lock:
            job = session.jobs.get(job_id)
        if job is None:
            raise Problem(404, "unknown-job", "unknown job in this session (only its last few jobs are kept)")
        return job

    def info(self) -> dict:
        limits, replicas = self.settings, self.replicas.load()
        with self.lock:
            sessions, memory = len(self.sessions), self.memory_bytes()
        return {
            "protocol": wire.PROTOCOL_VERSION,
            "server": f"SegVolSlicer {__version__}",
            "model": {
                "weights": self.weights,
                "device": ", ".join(replica["device"] for replica in replicas),
                "precision": self.replicas.all[0].engine.choice.precision,
            },
            "devices": replicas,
            "limits": {
                "max_sessions": limits.max_sessions,
                "idle_timeout_s": limits.idle_timeout_s,
                "upload_grace_s": limits.upload_grace_s,
                "max_upload_bytes": limits.max_upload_bytes,
                "max_request_bytes": limits.max_request_bytes,
                "max_memory_bytes": limits.max_memory_bytes,
                "max_voxels": limits.max_voxels,
                "max_dimension": limits.max_dimension,
                "max_targets": limits.max_targets,
                "max_points": limits.max_points,
            },
            "sessions": sessions,
            "memory_bytes": memory,
            "voxel_types": list(wire.VOXEL_TYPES),
        }

    def shutdown(self) -> None:
        with self.lock:
            sessions = list(self.sessions.values())
            self.sessions.clear()
        for session in sessions:
            self._release(session)
        self.replicas.shutdown()
