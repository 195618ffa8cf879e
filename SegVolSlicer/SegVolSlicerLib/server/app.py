"""The HTTP routes: a small FastAPI app over SegVolServer, behind the request guard (guard.py)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import __version__, wire
from ..engine import EngineHost
from ..errors import InputError
from .guard import RequestGuard
from .jobs import Job
from .models import (
    ErrorBody,
    Info,
    JobRequest,
    JobStatus,
    Lease,
    Reused,
    ReuseRequest,
    SessionOpened,
    SessionRequest,
    Uploaded,
)
from .sessions import SegVolServer, Session
from .settings import Problem, ServerSettings

MAX_WAIT_S = 10.0  # longest a request waits for a job (clients poll again)


def live_session(request: Request, session_id: Annotated[str, Path(max_length=200)]) -> Session:
    """The session named by the path (its lease renewed), or 404: every session route's dependency."""
    return request.app.state.server.session(session_id)


LiveSession = Annotated[Session, Depends(live_session)]
Wait = Annotated[float, Query(ge=0, le=3600, allow_inf_nan=False)]


def create_app(
    engine: EngineHost | Sequence[EngineHost],
    settings: ServerSettings | None = None,
    clock: Callable[[], float] = time.monotonic,
    weights: dict | None = None,
) -> FastAPI:
    """The FastAPI app serving one engine, or one engine per device (sessions spread over them). `clock`:
    seconds, for leases (tests inject their own); `weights`: what /info names the weights (serving.weights_identity)."""
    settings = settings or ServerSettings()
    engines = [engine] if isinstance(engine, EngineHost) else list(engine)
    server = SegVolServer(engines, settings, clock, weights)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        reaper = asyncio.create_task(_reap_forever(server))
        try:
            yield
        finally:
            reaper.cancel()
            await anyio.to_thread.run_sync(server.shutdown)

    def check_version(request: Request) -> None:
        version = request.headers.get(wire.PROTOCOL_HEADER)
        if version is not None and version != str(wire.PROTOCOL_VERSION):
            raise Problem(
                409,
                "version-mismatch",
                f"this client speaks SegVol protocol {version}, the server "
                f"{wire.PROTOCOL_VERSION}: install the same SegVolSlicer "
                "version on both sides",
            )

    security = HTTPBearer(auto_error=False, description="the server's API key (when it has one)")
    app = FastAPI(
        title="SegVol server",
        version=__version__,
        lifespan=lifespan,
        description="Promptable 3-D CT segmentation (SegVol) for remote clients: see SegVolSlicerLib.server. "
        "Every refusal is a JSON {detail, code}.",
        responses=_problems(400, *([401] if settings.api_key else []), 413, 422, 503),
        generate_unique_id_function=lambda route: route.name,  # operation ids: the links below name them
    )
    app.state.server = server
    app.add_middleware(RequestGuard, settings=settings)
    # The key is checked by the guard, before any of the body; the dependency declares the scheme (only where
    # the server has a key: the document says what the server does).
    router = APIRouter(dependencies=[Depends(check_version), *([Depends(security)] if settings.api_key else [])])

    @app.exception_handler(Problem)
    async def problem(request: Request, error: Problem):
        return JSONResponse(error.body(), error.status, headers=error.headers)

    @app.exception_handler(InputError)
    async def input_error(request: Request, error: InputError):
        return JSONResponse({"detail": str(error), "code": "input"}, 400)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, error: RequestValidationError):
        first = error.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        return JSONResponse({"detail": f"malformed request: {where}: {first.get('msg')}", "code": "malformed"}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):  # FastAPI's own (an unparseable body)
        code = {404: "not-found", 405: "method-not-allowed"}.get(error.status_code, "malformed")
        return JSONResponse({"detail": str(error.detail), "code": code}, error.status_code, headers=error.headers)

    @app.exception_handler(ClientDisconnect)
    async def client_left(request: Request, error: ClientDisconnect):
        return Response(status_code=400)  # nobody reads it; the guard logs the disconnect in one line

    unknown = _problems(404)

    @router.get("/info", responses=_problems(409))
    def info() -> Info:
        """Protocol version, model (weights name and digest, devices and their load) and limits."""
        return server.info()

    session_links = {
        name: {"operationId": name, "parameters": {"session_id": "$response.body#/session_id"}}
        for name in ("reuse", "upload", "heartbeat", "close_session", "submit", "forget_result")
    }

    @router.post(
        f"{wire.API}/sessions",
        status_code=201,
        responses={201: {"description": "the session", "links": session_links}, **_problems(409)},
    )
    def open_session(request: SessionRequest) -> SessionOpened:
        """A session for one volume. Its voxels come by upload, or by reuse with proof that the client
        holds them; `upload_needed` is always true."""
        session = server.open_session(request)
        return SessionOpened(
            session_id=session.id, upload_needed=True, nonce=session.nonce.hex(), lease_s=settings.idle_timeout_s
        )

    @router.post(f"{wire.API}/sessions/{{session_id}}/reuse", responses=_problems(404, 409))
    def reuse(session: LiveSession, request: ReuseRequest) -> Reused:
        """Reuses the voxels of a live session with the same frame, given wire.voxel_proof(nonce, voxels):
        `reused` false means upload them. A client that holds a volume's voxels learns from it whether a live
        session here holds the same volume, nothing else."""
        return Reused(reused=server.reuse(session, request.proof))

    @router.put(
        f"{wire.API}/sessions/{{session_id}}/volume",
        responses=_problems(404, 408, 409, 411),
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "the volume as a blosc2 array frame (wire.pack_volume), named by the session's sha256",
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    )
    async def upload(session: LiveSession, request: Request) -> Uploaded:
        """The session's voxels as a blosc2 array frame (its size limited by the guard). One upload at a time;
        a client that leaves before the end closes its session."""
        declared = request.headers.get("content-length", "").strip()
        if not declared.isdigit():
            raise Problem(411, "length-required", "a volume upload needs its Content-Length")
        length = int(declared)
        server.begin_upload(session, length)
        try:
            frame, digest, filled = bytearray(length), hashlib.sha256(), 0
            view = memoryview(frame)
            async for chunk in request.stream():  # hashed as it comes, into the one buffer
                if filled + len(chunk) > length:
                    raise InputError("the upload is longer than its Content-Length")
                view[filled : filled + len(chunk)] = chunk
                digest.update(chunk)
                filled += len(chunk)
            view.release()
            if filled != length:
                raise InputError("the upload is shorter than its Content-Length")
            await anyio.to_thread.run_sync(server.upload, session, frame, digest.hexdigest())
        except ClientDisconnect:  # the client gave up (Ctrl-C): nobody will use the session
            with contextlib.suppress(Problem):
                server.close(session.id)
            raise
        finally:
            server.end_upload(session)
        return Uploaded(uploaded=True)

    @router.post(f"{wire.API}/sessions/{{session_id}}/heartbeat", responses=unknown)
    def heartbeat(session: LiveSession) -> Lease:
        """Renews the session's lease."""
        return Lease(lease_s=settings.idle_timeout_s)

    @router.delete(f"{wire.API}/sessions/{{session_id}}", status_code=204, responses=unknown)
    def close_session(session_id: Annotated[str, Path(max_length=200)]) -> Response:
        """Ends the session: its voxels, engine session and kept results are freed at once."""
        server.close(session_id)
        return Response(status_code=204)

    @router.delete(f"{wire.API}/sessions/{{session_id}}/results/{{result_key}}", status_code=204, responses=unknown)
    def forget_result(
        session: LiveSession, result_key: Annotated[str, Path(pattern=wire.RESULT_KEY_PATTERN)]
    ) -> Response:
        """Drops the result kept under the key (the client's segment is gone); nothing if none is kept."""
        server.forget_results(session, result_key)
        return Response(status_code=204)

    job_links = {
        name: {
            "operationId": name,
            "parameters": {"session_id": "$request.path.session_id", "job_id": "$response.body#/job_id"},
        }
        for name in ("job_status", "cancel", "masks")
    }

    @router.post(
        f"{wire.API}/sessions/{{session_id}}/jobs",
        status_code=202,
        responses={202: {"description": "the job's status", "links": job_links}, **_problems(404, 409)},
    )
    async def submit(session: LiveSession, request: JobRequest, wait: Wait = 0.0) -> JobStatus:
        """Segments the targets; answers when the job ended or `wait` seconds passed."""
        job = server.submit(session, request)
        await _wait_for(job, None, wait)
        return job.status()

    @router.get(f"{wire.API}/sessions/{{session_id}}/jobs/{{job_id}}", responses=unknown)
    async def job_status(
        session: LiveSession,
        job_id: Annotated[str, Path(max_length=200)],
        wait: Wait = 0.0,
        since: Annotated[int | None, Query(ge=0)] = None,
    ) -> JobStatus:
        """The job's state and progress, once it changed past version `since` or `wait` seconds passed."""
        job = server.job(session, job_id)
        await _wait_for(job, since, wait)
        server.session(session.id)  # a long wait renews the lease too
        return job.status()

    @router.post(f"{wire.API}/sessions/{{session_id}}/jobs/{{job_id}}/cancel", responses=unknown)
    def cancel(session: LiveSession, job_id: Annotated[str, Path(max_length=200)]) -> JobStatus:
        """Stops the job at the engine's next safe point (between model passes)."""
        job = server.job(session, job_id)
        job.reporter.cancel.set()
        return job.status()

    @router.get(
        f"{wire.API}/sessions/{{session_id}}/jobs/{{job_id}}/masks",
        response_class=Response,
        responses={
            200: {
                "description": "every mask's bits, concatenated; the job's status says where each lies",
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            },
            **_problems(404, 409),
        },
    )
    def masks(session: LiveSession, job_id: Annotated[str, Path(max_length=200)]) -> Response:
        """The bits of every mask of a finished job."""
        job = server.job(session, job_id)
        if job.state != "done":
            raise Problem(409, "job-not-done", f"the job is {job.state}: its masks come once it is done")
        return Response(job.masks, media_type="application/octet-stream")

    app.include_router(router)
    return app


_MEANINGS = {
    400: "bad input (what to do is said)",
    401: "missing or wrong API key",
    404: "unknown or expired session, or unknown job",
    408: "the request body stalled or took too long",
    409: "protocol versions differ, or the session is not in the state the request needs",
    411: "a volume upload without its Content-Length",
    413: "a request, volume or upload over this server's limits",
    422: "a malformed request (the field is named)",
    503: "the server is busy (Retry-After says when to try again)",
}


def _problems(*statuses: int) -> dict:
    """OpenAPI responses for refusals: each a JSON {detail, code}."""
    return {status: {"model": ErrorBody, "description": _MEANINGS[status]} for status in statuses}


async def _wait_for(job: Job, since: int | None, wait: float) -> None:
    """On the event loop (no worker thread held), at most MAX_WAIT_S."""
    if wait > 0 and not job.finished:
        await job.wait(since, min(wait, MAX_WAIT_S))


async def _reap_forever(server: SegVolServer) -> None:
    limits = server.settings
    interval = min(max(min(limits.idle_timeout_s, limits.upload_grace_s) / 4, 0.5), 30.0)
    while True:
        await asyncio.sleep(interval)
        await anyio.to_thread.run_sync(server.reap)
