"""`segvol serve`: SegVol on a GPU box (or several GPUs of one box) for clients without one (the Slicer
panel, `segvol segment --server`).

    app = create_app(EngineHost(ModelChoice(device="cuda:0")), ServerSettings(api_key="..."))
    app = create_app([EngineHost(ModelChoice(device=f"cuda:{n}")) for n in range(2)], settings)  # 2 GPUs

Protocol (version in wire.PROTOCOL_VERSION; every endpoint but /docs and /openapi.json needs the API key,
when the server has one, as `Authorization: Bearer KEY`):

- `GET /info`: protocol version, model (weights name and sha256, devices and their load) and limits (a
  client checks the version here first);
- `POST /v1/sessions` {shape, dtype, ijk_to_ras, sha256} -> a session id, its lease and a nonce;
- `POST /v1/sessions/{id}/reuse` {proof}: the voxels of a live session with the same frame, for a client that
  proves it holds them (wire.voxel_proof(nonce, voxels)); else
  `PUT /v1/sessions/{id}/volume`: the voxels, a blosc2 array frame (wire.pack_volume);
- `POST /v1/sessions/{id}/heartbeat`, `DELETE /v1/sessions/{id}`; a session that sees no request for the
  idle timeout (or gets no volume within the upload grace) is reaped, and a client that finds its session
  gone opens a new one;
- `POST /v1/sessions/{id}/jobs?wait=S` {targets (each with its result_key, correct, current_mask), zoom_in} -> the
  job's status, once it finished or S
  seconds passed (each result has `changed`, the K,J,I ranges it may have changed, and `statistics`:
  clinical.statistics FIELDS, LPS, with the confidence when the engine keeps probabilities);
  `GET .../jobs/{job}?wait=S&since=V` waits for a change of the status past version V (progress, end);
  `POST .../jobs/{job}/cancel`; `GET .../jobs/{job}/masks`: every mask's bits, concatenated, where the
  status's `mask` entries (bounding box, offset, length) find them; `DELETE .../results/{key}` drops a kept result.

Each server session is one engine volume key on one device: results are the engine's, bit for bit. Each
device's model runs one job at a time on its own worker thread, so requests (progress, cancel, uploads) are
answered while it works. The wing: settings (limits), guard (key and sizes before the body), models
(request bodies), jobs, replicas (one engine per device), sessions (state and memory budget), app (routes),
serving (socket and uvicorn limits).
"""

from .app import create_app
from .replicas import expand_devices
from .serving import check_bind, listen, serve_in_thread, uvicorn_config, weights_identity
from .sessions import SegVolServer
from .settings import Problem, ServerSettings

__all__ = [
    "Problem",
    "SegVolServer",
    "ServerSettings",
    "check_bind",
    "create_app",
    "expand_devices",
    "listen",
    "serve_in_thread",
    "uvicorn_config",
    "weights_identity",
]
