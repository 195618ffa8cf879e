"""The HTTP routes: a small FastAPI app over SegVolServer, behind the request guard (guard.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

import anyio
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from .. import __version__, wire
from ..engine import EngineHost
from ..errors import InputError
from .guard import RequestGuard
from .jobs import Job
from .models import JobRequest, ReuseRequest, SessionRequest
from .sessions import SegVolServer
from .settings import Problem, ServerSettings

MAX_WAIT_S = 10.0  # longest a request waits for a job (clients poll again)


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

    app = FastAPI(
        title="SegVol server",
        version=__version__,
        lifespan=lifespan,
        description="Promptable 3-D CT segmentation (SegVol) for remote clients: see SegVolSlicerLib.server",
    )
    app.state.server = server
    app.add_middleware(RequestGuard, settings=settings)
    router = APIRouter(dependencies=[Depends(check_version)])

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

    @app.exception_handler(ClientDisconnect)
    async def client_left(request: Request, error: ClientDisconnect):
        return Response(status_code=400)  # nobody reads it; the guard logs the disconnect in one line

    @router.get("/info")
    def info() -> dict:
        """Protocol version, model (weights name and digest, devices and their load) and limits."""
        return server.info()

    @router.post(f"{wire.API}/sessions", status_code=201)
    def open_session(request: SessionRequest) -> dict:
        """A session for one volume. Its voxels come by upload, or by reuse with proof that the client
        holds them; `upload_needed` is always true (whether a volume is open here is nobody's business)."""
        session = server.open_session(request)
        return {
            "session_id": session.id,
            "upload_needed": True,
            "nonce": session.nonce.hex(),
            "lease_s": settings.idle_timeout_s,
        }

    @router.post(f"{wire.API}/sessions/{{session_id}}/reuse")
    def reuse(session_id: str, request: ReuseRequest) -> dict:
        """Reuses the voxels of a live session with the same frame, given wire.voxel_proof(nonce, voxels):
        `reused` false means upload them."""
        return {"reused": server.reuse(server.session(session_id), request.proof)}

    @router.put(f"{wire.API}/sessions/{{session_id}}/volume")
    async def upload(session_id: str, request: Request) -> dict:
        """The session's voxels as a blosc2 array frame (octet-stream; its size limited by the guard)."""
        session = server.session(session_id)
        with server.uploading(session):
            frame = bytearray()
            async for chunk in request.stream():
                frame += chunk
            await anyio.to_thread.run_sync(server.upload, session, bytes(frame))
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
    async def submit(session_id: str, request: JobRequest, wait: float = Query(0.0, ge=0, allow_inf_nan=False)) -> dict:
        """Segments the targets; answers when the job ended or `wait` seconds passed."""
        session = server.session(session_id)
        job = server.submit(session, request)
        await _wait_for(job, None, wait)
        return job.status()

    @router.get(f"{wire.API}/sessions/{{session_id}}/jobs/{{job_id}}")
    async def job_status(
        session_id: str,
        job_id: str,
        wait: float = Query(0.0, ge=0, allow_inf_nan=False),
        since: int | None = Query(None),
    ) -> dict:
        """The job's state and progress, once it changed past version `since` or `wait` seconds passed."""
        job = server.job(server.session(session_id), job_id)
        await _wait_for(job, since, wait)
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
