"""`segvol serve`: SegVol on a GPU box for clients without one (the Slicer panel, `segvol segment --server`).

    app = create_app(EngineHost(ModelChoice(device="cuda:0")), ServerSettings(api_key="..."))

Protocol (version in wire.PROTOCOL_VERSION; every endpoint but /docs and /openapi.json needs the API key,
when the server has one, as `Authorization: Bearer KEY`):

- `GET /info`: protocol version, model and limits (a client checks the version here first);
- `POST /v1/sessions` {shape, dtype, ijk_to_ras, sha256} -> a session id, its lease and whether the volume
  must be uploaded (not when a live session already holds the same content);
- `PUT /v1/sessions/{id}/volume`: the voxels, a blosc2 array frame (wire.pack_volume);
- `POST /v1/sessions/{id}/heartbeat`, `DELETE /v1/sessions/{id}`; a session that sees no request for the
  idle timeout is reaped, and a client that finds its session gone opens a new one;
- `POST /v1/sessions/{id}/jobs?wait=S` {targets, zoom_in} -> the job's status, once it finished or S seconds
  passed (each result has its `statistics`: clinical.statistics FIELDS, LPS, with the confidence when the
  engine keeps probabilities); `GET .../jobs/{job}?wait=S&since=V` waits for a change of the status past
  version V (progress, end); `POST .../jobs/{job}/cancel`; `GET .../jobs/{job}/masks`: every mask's bits,
  concatenated, where the status's `mask` entries (bounding box, offset, length) find them.

Each server session is one engine volume key: results are the engine's, bit for bit. The model runs one job
at a time on a worker thread, so requests (progress, cancel, uploads) are answered while it works.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import secrets
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import anyio
import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from . import __version__, wire
from .clinical.statistics import result_statistics
from .engine import EngineHost, VolumeInput
from .errors import Cancelled, InputError, SegVolError
from .reporting import Reporter
from .volume_checks import check_volume

log = logging.getLogger("segvol.server")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_WAIT_S = 10.0  # longest a request waits for a job (clients poll again)
JOBS_KEPT = 4  # finished jobs kept per session, for their masks


@dataclass(frozen=True)
class ServerSettings:
    """Limits of one server. max_upload_mb: compressed upload size; max_voxels / max_dimension: the volume."""

    api_key: str | None = None
    max_sessions: int = 8
    idle_timeout_s: float = 600.0
    max_upload_mb: float = 2048.0
    max_voxels: int = 1024 * 1024 * 1024
    max_dimension: int = 4096
    max_targets: int = 64
    max_points: int = 1000
    max_text_chars: int = 500


class Problem(Exception):
    """A request the server refuses: HTTP status, a code clients act on, and a message for the user."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def _unknown_session() -> Problem:
    return Problem(
        404,
        "unknown-session",
        "unknown or expired session (sessions end after the server's idle timeout): open a new session",
    )


# --- request bodies (they make the OpenAPI schema at /docs) ---


class SessionRequest(BaseModel):
    shape: list[int] = Field(min_length=3, max_length=3, description="(K, J, I) voxels")
    dtype: Literal[wire.VOXEL_TYPES] = Field(description="voxel type (little-endian)")
    ijk_to_ras: list[list[float]] = Field(min_length=4, max_length=4, description="4x4 IJK-to-RAS matrix")
    sha256: str = Field(pattern="^[0-9a-f]{64}$", description="sha256 of the upload frame (wire.frame_hash)")


class PointsBody(BaseModel):
    ijk: list[list[float]] = Field(description="(N, 3) voxel coordinates (i, j, k)")
    labels: list[int] = Field(description="1 positive, 0 negative")


class BoxBody(BaseModel):
    ijk_min: list[float] = Field(min_length=3, max_length=3)
    ijk_max: list[float] = Field(min_length=3, max_length=3)


class TargetBody(BaseModel):
    name: str = Field(min_length=1)
    text: str | None = None
    points: PointsBody | None = None
    box: BoxBody | None = None


class JobRequest(BaseModel):
    targets: list[TargetBody] = Field(min_length=1)
    zoom_in: bool = True


# --- state ---


class JobReporter(Reporter):
    """The engine's progress and notices, kept for the status endpoint; every change bumps `version` and
    wakes the requests waiting for one. The cancel endpoint sets `cancel`."""

    def __init__(self):
        super().__init__()
        self.changed = threading.Condition()
        self.version, self.stage, self.done, self.total, self.notices = 0, None, 0, 0, []

    def progress(self, stage: str, done: int, total: int) -> None:
        with self.changed:
            self.stage, self.done, self.total = stage, done, total
            self._bump()

    def notice(self, message: str) -> None:
        with self.changed:
            self.notices.append(message)
            self._bump()

    def _bump(self) -> None:
        self.version += 1
        self.changed.notify_all()


@dataclass
class Job:
    id: str
    targets: list
    zoom_in: bool
    reporter: JobReporter = field(default_factory=JobReporter)
    state: str = "queued"  # queued, running, done, failed, cancelled
    error: str | None = None
    error_code: str | None = None
    results: list[dict] = field(default_factory=list)
    masks: bytes = b""

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def finish(self, state: str, **values) -> None:
        with self.reporter.changed:
            self.state = state
            for name, value in values.items():
                setattr(self, name, value)
            self.reporter._bump()

    def status(self) -> dict:
        with self.reporter.changed:
            reporter = self.reporter
            return {
                "job_id": self.id,
                "state": self.state,
                "version": reporter.version,
                "stage": reporter.stage,
                "done": reporter.done,
                "total": reporter.total,
                "notices": list(reporter.notices),
                "error": self.error,
                "error_code": self.error_code,
                "results": self.results,
            }

    def wait(self, since: int | None, timeout: float) -> None:
        """Until the job ends, its status changes past version `since` (None: only the end counts) or
        `timeout` seconds pass."""
        with self.reporter.changed:
            self.reporter.changed.wait_for(
                lambda: self.finished or (since is not None and self.reporter.version > since), timeout
            )


@dataclass
class Session:
    id: str
    shape: tuple[int, int, int]
    dtype: str
    ijk_to_ras: np.ndarray
    sha256: str
    last_seen: float
    voxels: np.ndarray | None = None
    jobs: OrderedDict[str, Job] = field(default_factory=OrderedDict)

    @property
    def busy(self) -> bool:
        return any(not job.finished for job in self.jobs.values())

    def volume(self) -> VolumeInput:
        # The signature: a new upload (new content) or geometry makes a new engine session.
        return VolumeInput(self.id, self.voxels, self.ijk_to_ras, (self.sha256, self.ijk_to_ras.tobytes()))


class SegVolServer:
    """Sessions, jobs and the worker of one engine; the HTTP layer (create_app) only translates."""

    def __init__(self, engine: EngineHost, settings: ServerSettings, clock: Callable[[], float] = time.monotonic):
        self.engine, self.settings, self.clock = engine, settings, clock
        self.sessions: dict[str, Session] = {}
        self.lock = threading.Lock()
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segvol-model")

    # --- sessions ---

    def open_session(self, request: SessionRequest) -> tuple[Session, bool]:
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
        ijk_to_ras = np.asarray(request.ijk_to_ras, dtype=np.float64)
        if (
            ijk_to_ras.shape != (4, 4)
            or not np.all(np.isfinite(ijk_to_ras))
            or abs(np.linalg.det(ijk_to_ras[:3, :3])) < 1e-12
        ):
            raise Problem(422, "bad-geometry", "ijk_to_ras must be an invertible 4x4 matrix of finite numbers")
        self.reap()
        with self.lock:
            if len(self.sessions) >= self.settings.max_sessions:
                wait = self._seconds_until_a_session_frees()
                raise Problem(
                    503,
                    "server-busy",
                    f"the server is busy: all {self.settings.max_sessions} sessions are in use; try again in {wait} s",
                    {"Retry-After": str(wait)},
                )
            # A live session with the same frame lends its voxels: the client proved it has them by the hash.
            twin = next(
                (
                    s
                    for s in self.sessions.values()
                    if s.voxels is not None
                    and s.sha256 == request.sha256
                    and s.shape == shape
                    and s.dtype == request.dtype
                ),
                None,
            )
            session = Session(
                secrets.token_urlsafe(24),
                shape,
                request.dtype,
                ijk_to_ras,
                request.sha256,
                self.clock(),
                voxels=None if twin is None else twin.voxels,
            )
            self.sessions[session.id] = session
        return session, twin is None

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
                raise _unknown_session()
            session.last_seen = self.clock()
            return session

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
            raise _unknown_session()
        self._release(session)

    def reap(self) -> list[str]:
        """End the sessions idle for longer than the idle timeout (never one with a job queued or running)."""
        now = self.clock()
        with self.lock:
            expired = [
                s for s in self.sessions.values() if now - s.last_seen > self.settings.idle_timeout_s and not s.busy
            ]
            for session in expired:
                del self.sessions[session.id]
        for session in expired:
            log.info("session %s… reaped after %.0f s idle", session.id[:6], now - session.last_seen)
            self._release(session)
        return [session.id for session in expired]

    def _release(self, session: Session) -> None:
        for job in session.jobs.values():
            job.reporter.cancel.set()
        self.engine.forget(session.id)

    # --- jobs ---

    def submit(self, session: Session, request: JobRequest) -> Job:
        if session.voxels is None:
            raise Problem(409, "volume-missing", "the session has no volume yet: upload it first")
        if session.busy:
            raise Problem(409, "session-busy", "the session is already running a job: wait for it or cancel it")
        targets = [self._target(body, session.shape) for body in self._checked_sizes(request.targets)]
        job = Job(secrets.token_urlsafe(12), targets, request.zoom_in)
        with self.lock:
            session.jobs[job.id] = job
            while len(session.jobs) > JOBS_KEPT:
                session.jobs.popitem(last=False)
        self.worker.submit(self._run, session, job)
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
        points = body.points
        if points is not None and any(len(point) != 3 for point in points.ijk):
            raise InputError(f"target {body.name!r}: every point needs three coordinates (i, j, k)")
        target = wire.target_from_json(body.model_dump())
        if target.points is not None:
            target.points.check_inside(shape)
        if target.box is not None:
            target.box.clipped(shape)  # refuses a box beside the volume; the engine clips one that overlaps it
        return target

    def _run(self, session: Session, job: Job) -> None:
        reporter = job.reporter
        if reporter.cancel.is_set():
            job.finish("cancelled", error="segmentation cancelled", error_code="cancelled")
            return
        job.finish("running")
        try:
            results = self.engine.segment(session.volume(), job.targets, job.zoom_in, reporter)
            packed, blobs, offset = [], [], 0
            for result in results:
                entry = {
                    "name": result.name,
                    "text": result.text,
                    "warnings": list(result.warnings),
                    "windows": result.windows,
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
            log.exception("job %s failed", job.id)
            job.finish("failed", error=f"the server failed: {type(error).__name__}: {error}", error_code="internal")
        else:
            job.finish("done", results=packed, masks=b"".join(blobs))
        finally:
            with self.lock:
                gone = session.id not in self.sessions
            if gone:  # closed or reaped while it ran: the engine session it made goes too
                self.engine.forget(session.id)

    def job(self, session: Session, job_id: str) -> Job:
        with self.lock:
            job = session.jobs.get(job_id)
        if job is None:
            raise Problem(404, "unknown-job", "unknown job in this session (only its last few jobs are kept)")
        return job

    def info(self) -> dict:
        choice, limits, model = self.engine.choice, self.settings, self.engine.loaded_model
        device = str(model.device) if model is not None else choice.device
        with self.lock:
            sessions = len(self.sessions)
        return {
            "protocol": wire.PROTOCOL_VERSION,
            "server": f"SegVolSlicer {__version__}",
            "model": {"weights": choice.weights or "BAAI/SegVol", "device": device, "precision": choice.precision},
            "limits": {
                "max_sessions": limits.max_sessions,
                "idle_timeout_s": limits.idle_timeout_s,
                "max_upload_bytes": self.max_upload_bytes,
                "max_voxels": limits.max_voxels,
                "max_dimension": limits.max_dimension,
                "max_targets": limits.max_targets,
                "max_points": limits.max_points,
            },
            "sessions": sessions,
            "voxel_types": list(wire.VOXEL_TYPES),
        }

    @property
    def max_upload_bytes(self) -> int:
        return int(self.settings.max_upload_mb * 2**20)

    def shutdown(self) -> None:
        with self.lock:
            sessions = list(self.sessions.values())
            self.sessions.clear()
        for session in sessions:
            self._release(session)
        self.worker.shutdown(wait=True, cancel_futures=True)


# --- HTTP ---


def _wait_seconds(wait: float) -> float:
    return min(max(wait, 0.0), MAX_WAIT_S)


async def _wait_for(job: Job, since: int | None, wait: float) -> None:
    if wait > 0 and not job.finished:
        await anyio.to_thread.run_sync(job.wait, since, wait)


def create_app(
    engine: EngineHost, settings: ServerSettings | None = None, clock: Callable[[], float] = time.monotonic
) -> FastAPI:
    """The FastAPI app serving one engine. `clock`: seconds, for leases (tests inject their own)."""
    settings = settings or ServerSettings()
    server = SegVolServer(engine, settings, clock)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        reaper = asyncio.create_task(_reap_forever(server))
        try:
            yield
        finally:
            reaper.cancel()
            await anyio.to_thread.run_sync(server.shutdown)

    def check_access(request: Request) -> None:
        if settings.api_key is not None:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
                raise Problem(
                    401,
                    "access-refused",
                    "missing or wrong API key: give the server's key",
                    {"WWW-Authenticate": "Bearer"},
                )
        version = request.headers.get(wire.PROTOCOL_HEADER)
        if version is not None and version != str(wire.PROTOCOL_VERSION):
            raise Problem(
                409,
                "version-mismatch",
                f"this client speaks SegVol protocol {version}, the server "
                f"{wire.PROTOCOL_VERSION}: install the same SegVolSlicer "
                "version on both sides",
            )

    app = FastAPI(
        title="SegVol server",
        version=__version__,
        lifespan=lifespan,
        description="Promptable 3-D CT segmentation (SegVol) for remote clients: see SegVolSlicerLib.server",
    )
    app.state.server = server
    router = APIRouter(dependencies=[Depends(check_access)])

    @app.exception_handler(Problem)
    async def problem(request: Request, error: Problem):
        return JSONResponse({"detail": error.message, "code": error.code}, error.status, headers=error.headers)

    @app.exception_handler(InputError)
    async def input_error(request: Request, error: InputError):
        return JSONResponse({"detail": str(error), "code": "input"}, 400)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, error: RequestValidationError):
        first = error.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        return JSONResponse({"detail": f"malformed request: {where}: {first.get('msg')}", "code": "malformed"}, 422)

    @router.get("/info")
    def info() -> dict:
        """Protocol version, model and limits."""
        return server.info()

    @router.post(f"{wire.API}/sessions", status_code=201)
    def open_session(request: SessionRequest) -> dict:
        """A session for one volume; `upload_needed` false when the server already holds its content."""
        session, upload_needed = server.open_session(request)
        return {"session_id": session.id, "upload_needed": upload_needed, "lease_s": settings.idle_timeout_s}

    @router.put(f"{wire.API}/sessions/{{session_id}}/volume")
    async def upload(session_id: str, request: Request) -> dict:
        """The session's voxels as a blosc2 array frame (octet-stream)."""
        session = server.session(session_id)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > server.max_upload_bytes:
            raise _too_large(int(declared), server.max_upload_bytes)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > server.max_upload_bytes:
                raise _too_large(size, server.max_upload_bytes)
            chunks.append(chunk)
        await anyio.to_thread.run_sync(server.upload, session, b"".join(chunks))
        return {"uploaded": True}

    @router.post(f"{wire.API}/sessions/{{session_id}}/heartbeat")
    def heartbeat(session_id: str) -> dict:
        """Renews the session's lease."""
        server.session(session_id)
        return {"lease_s": settings.idle_timeout_s}

    @router.delete(f"{wire.API}/sessions/{{session_id}}", status_code=204)
    def close_session(session_id: str) -> Response:
        server.close(session_id)
        return Response(status_code=204)

    @router.post(f"{wire.API}/sessions/{{session_id}}/jobs", status_code=202)
    async def submit(session_id: str, request: JobRequest, wait: float = Query(0.0, ge=0)) -> dict:
        """Segments the targets; answers when the job ended or `wait` seconds passed."""
        session = server.session(session_id)
        job = server.submit(session, request)
        await _wait_for(job, None, _wait_seconds(wait))
        return job.status()

    @router.get(f"{wire.API}/sessions/{{session_id}}/jobs/{{job_id}}")
    async def job_status(
        session_id: str, job_id: str, wait: float = Query(0.0, ge=0), since: int | None = Query(None)
    ) -> dict:
        """The job's state and progress, once it changed past version `since` or `wait` seconds passed."""
        job = server.job(server.session(session_id), job_id)
        await _wait_for(job, since, _wait_seconds(wait))
        server.session(session_id)  # a long wait renews the lease too
        return job.status()

    @router.post(f"{wire.API}/sessions/{{session_id}}/jobs/{{job_id}}/cancel")
    def cancel(session_id: str, job_id: str) -> dict:
        """Stops the job at the engine's next safe point (between model passes)."""
        job = server.job(server.session(session_id), job_id)
        job.reporter.cancel.set()
        return job.status()

    @router.get(f"{wire.API}/sessions/{{session_id}}/jobs/{{job_id}}/masks")
    def masks(session_id: str, job_id: str) -> Response:
        """The bits of every mask of a finished job (octet-stream; the status says where each lies)."""
        job = server.job(server.session(session_id), job_id)
        if job.state != "done":
            raise Problem(409, "job-not-done", f"the job is {job.state}: its masks come once it is done")
        return Response(job.masks, media_type="application/octet-stream")

    app.include_router(router)
    return app


def _too_large(size: int, limit: int) -> Problem:
    return Problem(
        413,
        "upload-too-large",
        f"upload of {size / 2**20:.1f} MB: this server takes at most "
        f"{limit / 2**20:.1f} MB; crop or resample the volume first",
    )


async def _reap_forever(server: SegVolServer) -> None:
    interval = min(max(server.settings.idle_timeout_s / 4, 0.5), 30.0)
    while True:
        await asyncio.sleep(interval)
        await anyio.to_thread.run_sync(server.reap)


def listen(host: str, port: int) -> socket.socket:
    """The listening socket for uvicorn. TCP_NODELAY, inherited by every connection: uvicorn writes a
    response's head and body separately, and without it the body waits for the client's delayed ACK (40 ms
    a request on Linux)."""
    listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return listener


def check_bind(host: str, api_key: str | None) -> None:
    """Only loopback without an API key: anyone who reaches the port could otherwise use the GPU and read
    what others upload."""
    if api_key is None and host not in LOOPBACK_HOSTS:
        raise InputError(
            f"refusing to serve on {host} without an API key: give --api-key-file FILE (or set "
            "SEGVOL_API_KEY), or serve on 127.0.0.1"
        )
