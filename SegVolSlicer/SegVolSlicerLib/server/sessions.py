"""Sessions, their jobs and the memory they hold: the server's state, behind the HTTP layer (app.py)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .. import __version__, wire
from ..clinical.statistics import result_statistics
from ..engine import EngineHost, VolumeInput
from ..errors import Cancelled, InputError, SegVolError
from ..volume_checks import check_volume
from .jobs import Job
from .models import JobRequest, SessionRequest, TargetBody
from .replicas import Replica, Replicas
from .serving import weights_name
from .settings import Problem, ServerSettings

log = logging.getLogger("segvol.server")

JOBS_KEPT = 4  # finished jobs kept per session, for their masks
RESULTS_KEPT = 4  # last results kept per session (by target name), for corrections
# What an engine session holds per voxel of its volume at least: the prepared float32 image. The room the
# memory budget keeps for the sessions the engines run (their embedding caches are evicted to fit).
ENGINE_BYTES_PER_VOXEL = 4


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
    uploads: int = 0  # uploads in progress
    reuse_tried: bool = False
    jobs: OrderedDict[str, Job] = field(default_factory=OrderedDict)
    # The last results by target name, for corrections (`refine`); a few only: each holds full-grid masks.
    results: OrderedDict[str, object] = field(default_factory=OrderedDict)

    def remember(self, results) -> None:
        for result in results:
            self.results.pop(result.name, None)
            self.results[result.name] = result
            while len(self.results) > RESULTS_KEPT:
                self.results.popitem(last=False)

    @property
    def results_bytes(self) -> int:
        """What the kept results hold: their masks, probabilities and zoom-out logits."""
        held = 0
        for result in self.results.values():
            arrays = (result.mask, result.zoom_out_mask, result.probabilities)
            masks = {id(a): a.nbytes for a in arrays if a is not None}
            logits = result.zoom_out.logits if result.zoom_out is not None else None
            held += sum(masks.values()) + (logits.numel() * logits.element_size() if logits is not None else 0)
        return held

    @property
    def busy(self) -> bool:
        return any(not job.finished for job in self.jobs.values())

    @property
    def declared_bytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def volume(self) -> VolumeInput:
        # The signature: a new upload (new content) or geometry makes a new engine session.
        return VolumeInput(self.id, self.voxels, self.ijk_to_ras, (self.sha256, self.ijk_to_ras.tobytes()))


class SegVolServer:
    """Sessions, jobs and the workers of the engines (one per device); the HTTP layer only translates."""

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

    # --- sessions ---

    def open_session(self, request: SessionRequest) -> Session:
        shape = tuple(request.shape)
        if min(shape) < 1 or max(shape) > self.settings.max_dimension:
            raise Problem(
                413 if max(shape) > self.settings.max_dimension else 422,
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
        if abs(np.linalg.det(ijk_to_ras[:3, :3])) < 1e-12:
            raise Problem(422, "bad-geometry", "ijk_to_ras must be an invertible 4x4 matrix of finite numbers")
        self.reap()
        with self.lock:
            if len(self.sessions) >= self.settings.max_sessions:
                raise self._busy(f"all {self.settings.max_sessions} sessions are in use")
            self._check_memory(shape, request.dtype)
            now = self.clock()
            session = Session(
                secrets.token_urlsafe(24),
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
        """With `lock` held: refuses a volume that would take the server past its memory budget, counting the
        voxels every session holds or awaits and the room the engines need to run the largest volumes."""
        budget = self.settings.max_memory_bytes
        voxels = math.prod(shape)
        needed = voxels * np.dtype(dtype).itemsize
        alone = needed + ENGINE_BYTES_PER_VOXEL * voxels
        if alone > budget:
            raise Problem(
                413,
                "over-memory-budget",
                f"a volume of {shape[2]} x {shape[1]} x {shape[0]} {dtype} voxels needs {alone / 2**20:.0f} MB: "
                f"this server holds at most {budget / 2**20:.0f} MB for its clients; crop or resample it first",
            )
        sizes = sorted([math.prod(s.shape) for s in self.sessions.values()] + [voxels], reverse=True)
        engines_room = ENGINE_BYTES_PER_VOXEL * sum(sizes[: len(self.replicas.all)])
        if self._stored_bytes() + needed + engines_room > budget:
            raise self._busy(f"its memory ({budget / 2**20:.0f} MB for clients) is taken by other volumes")

    def _stored_bytes(self) -> int:
        """With `lock` held: the voxels the sessions hold (shared ones once) or await."""
        held = {id(s.voxels): s.voxels.nbytes for s in self.sessions.values() if s.voxels is not None}
        awaited = sum(s.declared_bytes for s in self.sessions.values() if s.voxels is None)
        return sum(held.values()) + awaited + sum(s.results_bytes for s in self.sessions.values())

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
        nothing, and without the voxels nobody learns whether a volume is open here. One try per session."""
        with self.lock:
            if session.voxels is not None or session.reuse_tried:
                raise Problem(409, "reuse-tried", "this session already has its volume or tried to reuse one")
            session.reuse_tried = True
            content = (session.sha256, session.shape, session.dtype)
            held = (s for s in self.sessions.values() if s.voxels is not None)
            twin = next((s.voxels for s in held if (s.sha256, s.shape, s.dtype) == content), None)
        # As much hashing without a twin as with one: the answer's time tells nothing either.
        expected = wire.voxel_proof(session.nonce, twin) if twin is not None else _proof_of_nothing(session)
        if twin is None or not hmac.compare_digest(expected, proof):
            return False
        with self.lock:
            session.voxels = twin
        return True

    @contextlib.contextmanager
    def uploading(self, session: Session):
        """While the volume streams in, the session is not reaped for want of it."""
        with self.lock:
            session.uploads += 1
        try:
            yield
        finally:
            with self.lock:
                session.uploads -= 1
                session.last_seen = self.clock()

    def upload(self, session: Session, frame: bytes) -> None:
        if wire.frame_hash(frame) != session.sha256:
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
                and not s.uploads
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
        session.replica.engine.forget(session.id)
        self.replicas.release(session.replica)

    # --- jobs ---

    def submit(self, session: Session, request: JobRequest) -> Job:
        if session.voxels is None:
            raise Problem(409, "volume-missing", "the session has no volume yet: upload it first")
        if session.busy:
            raise Problem(409, "session-busy", "the session is already running a job: wait for it or cancel it")
        targets = [self._target(body, session.shape) for body in self._checked_sizes(request.targets)]
        job = Job(secrets.token_urlsafe(12), targets, request.zoom_in, request.refine)
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
    def _target(body: TargetBody, shape):
        target = wire.target_from_json(body.model_dump())
        if target.points is not None:
            target.points.check_inside(shape)
        if target.box is not None:
            target.box.clipped(shape)  # refuses a box beside the volume; the engine clips one that overlaps it
        return target

    def _run(self, session: Session, job: Job) -> None:
        reporter, engine = job.reporter, session.replica.engine
        if reporter.cancel.is_set():
            job.finish("cancelled", error="segmentation cancelled", error_code="cancelled")
            return
        job.finish("running")
        try:
            with self.lock:  # the engines' sessions get what the stored volumes leave of the budget
                room = self.settings.max_memory_bytes - self._stored_bytes()
            engine.memory_budget_bytes = max(0, room // len(self.replicas.all))
            results = self._results(session, job)
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
                masks = [("zoom_out_mask", result.zoom_out_mask)]
                if result.mask is result.zoom_out_mask:  # no zoom-in: one mask, sent once
                    entry["mask"] = "zoom_out_mask"
                else:
                    masks.append(("mask", result.mask))
                for kind, mask in masks:
                    bounds, bits = wire.pack_mask(mask, within=result.crop)  # empty outside the body crop
                    entry[kind] = {"bounds": bounds, "offset": offset, "length": len(bits)}
                    blobs.append(bits)
                    offset += len(bits)
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
                session.remember(results)
            job.finish("done", results=packed, masks=b"".join(blobs))
        finally:
            with self.lock:
                gone = session.id not in self.sessions
            if gone:  # closed or reaped while it ran: the engine session it made goes too
                engine.forget(session.id)

    def _results(self, session: Session, job: Job) -> list:
        volume, engine = session.volume(), session.replica.engine
        if not job.refine:
            return engine.segment(volume, job.targets, job.zoom_in, job.reporter)
        results = []
        for target in job.targets:
            with self.lock:
                previous = session.results.get(target.name)
            if previous is None:
                results += engine.segment(volume, [target], job.zoom_in, job.reporter)
            else:
                results.append(engine.refine(volume, previous, target, job.reporter))
        return results

    def job(self, session: Session, job_id: str) -> Job:
        with self.lock:
            job = session.jobs.get(job_id)
        if job is None:
            raise Problem(404, "unknown-job", "unknown job in this session (only its last few jobs are kept)")
        return job

    def info(self) -> dict:
        limits, replicas = self.settings, self.replicas.load()
        with self.lock:
            sessions, stored = len(self.sessions), self._stored_bytes()
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
            "memory_bytes": stored + self.replicas.memory_bytes(),
            "voxel_types": list(wire.VOXEL_TYPES),
        }

    def shutdown(self) -> None:
        with self.lock:
            sessions = list(self.sessions.values())
            self.sessions.clear()
        for session in sessions:
            self._release(session)
        self.replicas.shutdown()


def _proof_of_nothing(session: Session) -> str:
    """An HMAC over as many bytes as the session declared (zeros), to spend the time a real proof takes."""
    digest, zeros = hmac.new(session.nonce, digestmod=hashlib.sha256), bytes(2**20)
    whole, rest = divmod(session.declared_bytes, len(zeros))
    for _ in range(whole):
        digest.update(zeros)
    digest.update(zeros[:rest])
    return digest.hexdigest()
