"""SegVol on a remote server (`segvol serve`), with the in-process session's shape and no torch.

    client = SegVolClient("http://gpu-box:8765", api_key="...")
    with client.open_session(volume_kji, ijk_to_ras) as session:
        liver = session.segment(Target("liver", text="liver"))          # liver.mask: (K, J, I) uint8

Imports numpy, httpx, blosc2 and the project's torch-free modules only: Slicer can use a GPU server without
installing torch. `RemoteEngine` puts the EngineHost face over it for the Slicer logic and the CLI.

Every failure is one SegVolError that says what to do: server unreachable, key refused, protocol versions
differ, server busy; a session the server has reaped is reopened (and its volume re-sent) by the client.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import httpx
import numpy as np

from . import wire
from .clinical.confidence import Confidence
from .clinical.statistics import SegmentStatistics
from .errors import Cancelled, InputError, SegVolError
from .prompts import Target
from .reporting import NO_REPORT, Reporter

IDEMPOTENT_METHODS = ("GET", "HEAD", "PUT", "DELETE")
# A kept-alive connection the server (or a proxy) closed meanwhile: nothing reached the server's app.
RESET_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
POLL_WAIT_S = 0.5  # longest a status request waits on the server: how soon a cancel is noticed
FIRST_WAIT_S = 2.0  # a job request waits this long for the job: a quick click is one round trip
# Closing a session frees memory on the server; nobody waits for it, so a hung server costs seconds, not minutes.
CLOSE_TIMEOUT_S = 5.0
UPLOAD_CHUNK = 1 << 20  # the upload checks for Cancel between chunks


class ServerError(SegVolError):
    """The SegVol server cannot be used as asked."""


class ServerUnreachable(ServerError):
    pass


class AccessRefused(ServerError):
    pass


class VersionMismatch(ServerError):
    pass


class ServerBusy(ServerError):
    def __init__(self, message: str, retry_after_s: float | None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SessionExpired(ServerError):
    pass


@dataclass(frozen=True)
class WireJob:
    """One target of a job as it travels: engine.TargetJob with its result key as the wire's string."""

    target: Target
    result_key: str | None = None
    correct: bool = False
    current_mask: np.ndarray | None = None


@dataclass
class RemoteResult:
    """One target's result, as engine SegmentationResult has it."""

    name: str
    text: str | None
    mask: np.ndarray  # (K, J, I) uint8 on the input grid
    zoom_out_mask: np.ndarray
    warnings: list[str] = field(default_factory=list)
    windows: int = 0
    changed: tuple[slice, slice, slice] | None = None  # (K, J, I) slices this run may have changed
    statistics: SegmentStatistics | None = None  # the server's, LPS coordinates (None: an older server)

    @property
    def confidence(self) -> Confidence | None:
        """The server's confidence (computed there from the probabilities, which do not travel)."""
        return None if self.statistics is None else self.statistics.confidence


class SegVolClient:
    """A SegVol server. `http`: an httpx.Client to send through instead of a new one (tests give the app's)."""

    def __init__(
        self, url: str, api_key: str | None = None, *, timeout_s: float = 60.0, http: httpx.Client | None = None
    ):
        self.url = url.rstrip("/")
        headers = {wire.PROTOCOL_HEADER: str(wire.PROTOCOL_VERSION)}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key.strip()}"
        if http is None:
            # Loopback and LAN servers only: never a proxy from the environment between us and the GPU box.
            http = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=10.0), trust_env=False)
        self.http, self.headers = http, headers
        self._info: dict | None = None
        self._lock = threading.Lock()

    def info(self) -> dict:
        """The server's protocol version, model and limits; VersionMismatch if it speaks another protocol."""
        with self._lock:
            if self._info is None:
                info = self.request("GET", "/info").json()
                if info.get("protocol") != wire.PROTOCOL_VERSION:
                    raise VersionMismatch(
                        f"the server at {self.url} speaks SegVol protocol {info.get('protocol')}, "
                        f"this client {wire.PROTOCOL_VERSION}: install the same SegVolSlicer "
                        "version on both sides"
                    )
                self._info = info
            return self._info

    def open_session(self, volume_kji: np.ndarray, ijk_to_ras, reporter: Reporter = NO_REPORT) -> RemoteSession:
        """A session for one volume: the volume goes up once (not at all if the server already holds it)."""
        self.info()
        return RemoteSession(self, volume_kji, ijk_to_ras, reporter)

    def request(self, method: str, path: str, *, idempotent: bool | None = None, **kwargs) -> httpx.Response:
        """One request; every failure becomes the SegVolError that says what to do. An idempotent request
        (GET, PUT, DELETE, or `idempotent`) is sent once more when a kept-alive connection turns out reset."""
        headers = {**self.headers, **kwargs.pop("headers", {})}
        retry = method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        while True:
            try:
                response = self.http.request(method, self.url + path, headers=headers, **kwargs)
                break
            except httpx.TransportError as error:
                if retry and isinstance(error, RESET_ERRORS):
                    retry = False
                    continue
                raise ServerUnreachable(
                    f"cannot reach the SegVol server at {self.url} ({type(error).__name__}: "
                    f"{error}): check the address and that `segvol serve` runs there"
                ) from None
        if response.is_success:
            return response
        try:
            body = response.json()
            message, code = str(body.get("detail")), body.get("code")
        except ValueError:
            message, code = response.text[:200] or response.reason_phrase, None
        status = response.status_code
        if status == 401:
            raise AccessRefused(f"the SegVol server at {self.url} refused the API key: give its key")
        if code == "version-mismatch":
            raise VersionMismatch(message)
        if status == 503:
            retry = response.headers.get("retry-after")
            raise ServerBusy(
                f"the SegVol server at {self.url}: {message}", float(retry) if retry and retry.isdigit() else None
            )
        if code == "unknown-session":
            raise SessionExpired(message)
        if status in (502, 504) and code is None and path.startswith(f"{wire.API}/sessions/"):
            # a proxy in front of several servers (deploy/segvol-nginx.conf) whose box of this session is down
            raise SessionExpired(f"the SegVol server holding this session behind {self.url} is unreachable ({status})")
        if status == 404 and code is None:
            raise VersionMismatch(f"{self.url} does not answer {path}: is it a SegVol server of the same version?")
        if code == "internal" or status >= 500:
            raise ServerError(f"server error: {message} (the SegVol server at {self.url}; see its log)")
        raise InputError(message)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> SegVolClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class RemoteSession:
    """Segments one volume on the server, any number of times; the in-process SegVolSession's face."""

    def __init__(self, client: SegVolClient, volume_kji: np.ndarray, ijk_to_ras, reporter: Reporter = NO_REPORT):
        self.client = client
        voxels = wire.wire_voxels(volume_kji)
        if voxels.ndim != 3:
            raise InputError(f"the volume has shape {voxels.shape}: give a 3-D (K, J, I) array")
        self.ijk_to_ras = np.asarray(ijk_to_ras, dtype=np.float64)
        if self.ijk_to_ras.shape != (4, 4):
            raise InputError(f"ijk_to_ras has shape {self.ijk_to_ras.shape}: give the 4x4 IJK-to-RAS matrix")
        self.shape, self.dtype = voxels.shape, wire.voxel_type(voxels)
        self.voxels = voxels  # kept, as the frame: proof of possession, and a reopen after a reap
        self.frame = wire.pack_volume(voxels)  # kept: a reaped session is reopened without compressing again
        self.sha256 = wire.frame_hash(self.frame)
        self.session_id: str | None = None
        self.uploaded = False  # whether the last open sent the voxels (False: the server had them)
        self.closed = False  # closed by its owner: never reopened (a reopened one would be nobody's to close)
        self._open(reporter)

    def _open(self, reporter: Reporter = NO_REPORT) -> None:
        reply = self.client.request(
            "POST",
            f"{wire.API}/sessions",
            json={
                "shape": list(self.shape),
                "dtype": self.dtype,
                "ijk_to_ras": self.ijk_to_ras.tolist(),
                "sha256": self.sha256,
            },
        ).json()
        self.session_id, self.uploaded = reply["session_id"], reply["upload_needed"]
        try:
            if self.uploaded and "nonce" in reply:  # the server lends a live session's voxels to their holder
                proof = wire.voxel_proof(bytes.fromhex(reply["nonce"]), self.voxels)
                reused = self.client.request("POST", self._path("/reuse"), json={"proof": proof}, idempotent=True)
                self.uploaded = not reused.json()["reused"]
            if self.uploaded:
                limit = self.client.info()["limits"].get("max_upload_bytes")
                if limit is not None and len(self.frame) > limit:
                    raise InputError(
                        f"upload of {len(self.frame) / 2**20:.1f} MB: this server takes at most "
                        f"{limit / 2**20:.1f} MB; crop or resample the volume first"
                    )
                self.client.request(
                    "PUT",
                    self._path("/volume"),
                    content=self._chunks(reporter),
                    headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(self.frame))},
                )
        except SegVolError:
            self._close_quietly()
            # A Cancel raised in the body's generator reaches us as the transport's failure (an in-process
            # transport hands it to the server, which answers 500): the user's Cancel is what happened.
            reporter.check_cancelled()
            raise

    def _chunks(self, reporter: Reporter):
        """The volume frame in pieces; Cancel stops the upload between two of them."""
        for start in range(0, len(self.frame), UPLOAD_CHUNK):
            reporter.check_cancelled()
            reporter.progress("upload", start, len(self.frame))
            yield self.frame[start : start + UPLOAD_CHUNK]
        reporter.progress("upload", len(self.frame), len(self.frame))

    def _path(self, tail: str = "") -> str:
        return f"{wire.API}/sessions/{self.session_id}{tail}"

    def segment(self, target: Target, zoom_in: bool = True, reporter: Reporter | None = None) -> RemoteResult:
        return self.segment_many([target], zoom_in, reporter)[0]

    def refine(self, target: Target, reporter: Reporter | None = None) -> RemoteResult:
        """This session's last result for the target's name corrected around its new clicks, as
        EngineHost.refine (the official pipeline when the server holds no result for that name)."""
        return self.segment_many([target], True, reporter, refine=True)[0]

    def segment_many(
        self, targets: Sequence[Target], zoom_in: bool = True, reporter: Reporter | None = None, refine: bool = False
    ) -> list[RemoteResult]:
        """One result per target, in order, as the server's engine made them; each kept on the server under
        its name, for `refine`. Progress comes to `reporter`; setting `reporter.cancel` cancels the job on the
        server (Cancelled is raised)."""
        jobs = [WireJob(target, wire.result_key_string(("name", target.name)), refine) for target in targets]
        return self.run_jobs(jobs, zoom_in, reporter)

    def run_jobs(
        self, jobs: Sequence[WireJob], zoom_in: bool = True, reporter: Reporter | None = None
    ) -> list[RemoteResult]:
        """One result per job, in order: each target's result kept on the server under its result key (if it
        has one) and corrected from there when the job asks for it."""
        reporter = reporter or NO_REPORT
        body = {
            "targets": [wire.target_to_json(j.target, j.result_key, j.correct, j.current_mask) for j in jobs],
            "zoom_in": bool(zoom_in),
        }
        if self.closed:
            raise SessionExpired("this SegVol server session was closed: open a new one")
        try:
            return self._run(body, reporter)
        except SessionExpired:  # reaped while idle: a new session, the volume again, the same request
            if self.closed:  # closed meanwhile (e.g. its volume was removed): nothing to redo
                raise
            reporter.check_cancelled()
            self._open()
            return self._run(body, reporter)

    def forget_result(self, result_key: str) -> None:
        """The server drops the result it keeps under the key."""
        if self.session_id is not None and not self.closed:
            try:
                self.client.request("DELETE", self._path(f"/results/{result_key}"), timeout=CLOSE_TIMEOUT_S)
            except SessionExpired:
                pass

    def _run(self, body: dict, reporter: Reporter) -> list[RemoteResult]:
        reporter.check_cancelled()
        status = self.client.request(
            "POST", self._path("/jobs"), json=body, params={"wait": 0 if reporter.cancel.is_set() else FIRST_WAIT_S}
        ).json()
        job_path, shown, notices, cancel_sent = self._path(f"/jobs/{status['job_id']}"), None, 0, False
        while True:
            progress = (status["stage"], status["done"], status["total"])
            if status["stage"] is not None and progress != shown:
                reporter.progress(*progress)
                shown = progress
            for message in status["notices"][notices:]:
                reporter.notice(message)
            notices = len(status["notices"])
            if status["state"] in ("done", "failed", "cancelled"):
                break
            if reporter.cancel.is_set() and not cancel_sent:
                status, cancel_sent = self.client.request("POST", job_path + "/cancel", idempotent=True).json(), True
                continue
            status = self.client.request(
                "GET", job_path, params={"wait": POLL_WAIT_S, "since": status["version"]}
            ).json()
        if status["state"] == "cancelled":
            raise Cancelled(status["error"] or "segmentation cancelled")
        if status["state"] == "failed":
            if status["error_code"] == "input":
                raise InputError(status["error"])
            raise ServerError(f"server error: {status['error']} (the SegVol server at {self.client.url})")
        bits = self.client.request("GET", job_path + "/masks").content
        return [self._result(entry, bits) for entry in status["results"]]

    def _result(self, entry: dict, bits: bytes) -> RemoteResult:
        final, zoom_out_mask = wire.unpack_result_masks(entry, bits, self.shape)
        statistics = entry.get("statistics")
        return RemoteResult(
            entry["name"],
            entry["text"],
            final,
            zoom_out_mask,
            list(entry["warnings"]),
            int(entry["windows"]),
            None if entry.get("changed") is None else tuple(slice(a, b) for a, b in entry["changed"]),
            None if statistics is None else SegmentStatistics.from_row(statistics),
        )

    def heartbeat(self) -> None:
        """Renews the session's lease (any request does; this one does nothing else)."""
        try:
            self.client.request("POST", self._path("/heartbeat"), idempotent=True)
        except SessionExpired:
            self._open()

    def close(self) -> None:
        """Ends the session on the server (its memory is freed there at once)."""
        self.closed = True
        if self.session_id is not None:
            try:
                self.client.request("DELETE", self._path(), timeout=CLOSE_TIMEOUT_S)
            except SessionExpired:
                pass
            self.session_id = None

    def _close_quietly(self) -> None:
        try:
            self.close()
        except SegVolError:
            self.session_id = None

    def __enter__(self) -> RemoteSession:
        return self

    def __exit__(self, *exc_info) -> None:
        self._close_quietly()


@dataclass
class _Kept:
    signature: Hashable
    session: RemoteSession
    results: set = field(default_factory=set)  # the result keys the server keeps for this session


class _Closer:
    """Ends server sessions on a thread of its own, in order: forgetting a volume never waits on the network
    (in Slicer the forget comes from the GUI thread)."""

    def __init__(self):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, work) -> None:
        self._queue.put(work)
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="SegVol session closer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                work = self._queue.get(timeout=1.0)
            except queue.Empty:
                return
            try:
                work()
            except Exception:  # a close that failed leaves the session to the server's reaper
                pass

    def join(self, timeout: float | None = None) -> bool:
        """Wait (tests, scripts) until every queued close is done; False if still busy after `timeout`."""
        done = threading.Event()
        self.put(done.set)
        return done.wait(timeout)


class RemoteEngine:
    """The Engine protocol (engine.py) over a server: one remote session per volume key, reopened when the
    volume's signature changes; results kept on the server per (session, result key), the key travelling as
    wire.result_key_string. The model choice is the server's (`select` changes nothing). `forget`,
    `forget_results` and `keep_only` return at once: the server is told from a background thread
    (`closer.join()` waits)."""

    def __init__(self, url: str, api_key: str | None = None, *, http: httpx.Client | None = None):
        self.client = SegVolClient(url, api_key, http=http)
        self.closer = _Closer()
        self._sessions: dict[Hashable, _Kept] = {}
        self._forgets: dict[Hashable, int] = {}  # per key: how often it was forgotten (a session opened meanwhile
        self._lock = threading.RLock()  # belongs to a volume gone: it is closed, not kept)

    def segment(
        self, volume, jobs: Sequence, zoom_in: bool = True, reporter: Reporter = NO_REPORT
    ) -> list[RemoteResult]:
        """`volume`: an engine.VolumeInput (key, voxels, ijk_to_ras, signature); `jobs`: engine.TargetJob
        (target, result_key, correct, current_mask)."""
        session = self.session(volume, reporter)
        jobs = [WireJob(job) if isinstance(job, Target) else job for job in jobs]  # a bare Target: TargetJob(target)
        sent = [
            WireJob(
                job.target,
                None if job.result_key is None else wire.result_key_string(job.result_key),
                job.correct,
                job.current_mask,
            )
            for job in jobs
        ]
        results = session.run_jobs(sent, zoom_in, reporter)
        with self._lock:
            kept = self._sessions.get(volume.key)
            if kept is not None and kept.session is session:
                kept.results |= {job.result_key for job in jobs if job.result_key is not None}
        return results

    def segment_from_mask(self, volume, job, mask_kji, reporter: Reporter = NO_REPORT):
        raise SegVolError(
            "segmenting again from a mask runs on this computer only, not on a SegVol server: set Run on to "
            "this computer for it"
        )

    def has_result(self, volume, result_key: Hashable) -> bool:
        """Whether the server keeps a result under the key for this volume (as far as this client knows: a
        server short of memory may have let it go, and then a correction runs the official pipeline)."""
        with self._lock:
            kept = self._sessions.get(volume.key)
            return kept is not None and kept.signature == volume.signature and result_key in kept.results

    def forget_results(self, result_key_prefix: Hashable) -> None:
        """Every kept result whose key starts with the prefix (e.g. a segmentation node removed) is dropped on
        the server."""
        with self._lock:
            for kept in self._sessions.values():
                gone = {k for k in kept.results if isinstance(k, tuple) and k and k[0] == result_key_prefix}
                kept.results -= gone
                for key in gone:
                    self.closer.put(functools.partial(kept.session.forget_result, wire.result_key_string(key)))

    def session(self, volume, reporter: Reporter = NO_REPORT) -> RemoteSession:
        with self._lock:
            kept = self._sessions.get(volume.key)
            if kept is not None and kept.signature == volume.signature:
                return kept.session
            self.forget(volume.key)
            forgets = self._forgets.get(volume.key, 0)
        session = self.client.open_session(volume.voxels, volume.ijk_to_ras, reporter)
        with self._lock:
            if self._forgets.get(volume.key, 0) == forgets:
                self._sessions[volume.key] = _Kept(volume.signature, session)
                return session
        self.closer.put(session._close_quietly)  # forgotten while it was opened: no orphan on the server
        raise Cancelled("the volume was closed while it was sent to the SegVol server")

    def forget(self, key: Hashable) -> None:
        with self._lock:
            kept = self._sessions.pop(key, None)
            self._forgets[key] = self._forgets.get(key, 0) + 1
        if kept is not None:
            kept.session.closed = True  # at once: a run still using it must not reopen it
            self.closer.put(kept.session._close_quietly)

    def keep_only(self, keys) -> None:
        keys = set(keys)
        for key in [k for k in self.session_keys() if k not in keys]:
            self.forget(key)

    def forget_if_changed(self, key: Hashable, signature: Hashable) -> None:
        with self._lock:
            kept = self._sessions.get(key)
            changed = kept is not None and kept.signature != signature
        if changed:
            self.forget(key)

    def session_keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._sessions)

    def select(self, choice) -> None:
        """The server runs its own model: nothing to select here."""

    def close(self, wait_s: float = 2 * CLOSE_TIMEOUT_S) -> None:
        """End every session, waiting up to `wait_s` for the server (a command or script ends them before it
        exits); 0: return at once (Slicer's GUI thread)."""
        self.keep_only(())
        self.closer.put(self.client.close)
        if wait_s > 0:
            self.closer.join(wait_s)

    def __enter__(self) -> RemoteEngine:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
