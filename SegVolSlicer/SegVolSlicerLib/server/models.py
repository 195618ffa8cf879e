"""Request and response bodies: the OpenAPI document at /openapi.json is made from them. Constrained, so that
every malformed request is a 422 with the field named: strict finite numbers (no booleans, no strings), rows
of the lengths the arrays need, labels 0 or 1, sizes within the server's hard limits."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from .. import wire

Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Coordinates = Annotated[list[Finite], Field(min_length=3, max_length=3, description="(i, j, k)")]
MatrixRow = Annotated[list[Finite], Field(min_length=4, max_length=4)]
Hex64 = Annotated[str, Field(pattern="^[0-9a-f]{64}$")]
# The largest dimension any server takes (ServerSettings.max_dimension may be lower: then 413).
Dimension = Annotated[int, Field(strict=True, ge=1, le=65536)]
Count = Annotated[int, Field(strict=True, ge=0)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests ---


class SessionRequest(Body):
    shape: list[Dimension] = Field(min_length=3, max_length=3, description="(K, J, I) voxels")
    dtype: Literal[wire.VOXEL_TYPES] = Field(description="voxel type (little-endian)")
    ijk_to_ras: list[MatrixRow] = Field(min_length=4, max_length=4, description="4x4 IJK-to-RAS matrix")
    sha256: Hex64 = Field(description="sha256 of the upload frame (wire.frame_hash)")


class ReuseRequest(Body):
    proof: Hex64 = Field(
        description="HMAC-SHA256 of the volume's voxels (wire.voxel_proof) keyed by the session's nonce"
    )


class PointsBody(Body):
    ijk: list[Coordinates] = Field(max_length=100000, description="(N, 3) voxel coordinates (i, j, k)")
    labels: list[Literal[0, 1]] = Field(max_length=100000, description="1 positive, 0 negative")


class BoxBody(Body):
    ijk_min: Coordinates
    ijk_max: Coordinates


Bounds = Annotated[list[Annotated[int, Field(strict=True, ge=0, le=65536)]], Field(min_length=6, max_length=6)]


class MaskBody(Body):
    bounds: Bounds | None = Field(description="(k0, j0, i0, k1, j1, i1) of the nonzero voxels, half-open; null: empty")
    bits: str = Field(max_length=2**27, description="the box's bits, packed and blosc2-compressed, in base64")


class TargetBody(Body):
    name: str = Field(min_length=1, max_length=10000)
    text: str | None = Field(None, max_length=10000)
    points: PointsBody | None = None
    box: BoxBody | None = None
    result_key: str | None = Field(
        None,
        pattern=wire.RESULT_KEY_PATTERN,
        description="where the session keeps this target's result for later corrections (opaque; "
        "wire.result_key_string); null: nothing kept",
    )
    correct: bool = Field(
        False,
        description="correct the result kept under result_key around the new clicks (a mode beyond the official "
        "pipeline); without a kept result, the official pipeline",
    )
    current_mask: MaskBody | None = Field(
        None, description="the segment as it is now (hand edits included): a correction starts from it"
    )


class JobRequest(Body):
    targets: list[TargetBody] = Field(min_length=1, max_length=10000)
    zoom_in: bool = True


# --- responses ---


class ErrorBody(BaseModel):
    """Every refusal: what to do, and a code clients act on."""

    detail: str
    code: str


class SessionOpened(BaseModel):
    session_id: str
    upload_needed: bool = Field(description="always true: whether a volume is open here is nobody's business")
    nonce: str = Field(description="hex: keys wire.voxel_proof for /reuse")
    lease_s: float


class Reused(BaseModel):
    reused: bool


class Uploaded(BaseModel):
    uploaded: bool


class Lease(BaseModel):
    lease_s: float


class MaskPlace(BaseModel):
    bounds: list[int] | None
    offset: int
    length: int


class ResultEntry(BaseModel):
    name: str
    text: str | None
    warnings: list[str]
    windows: int
    changed: list[list[int]] | None
    statistics: dict[str, str | float | int | None]
    zoom_out_mask: MaskPlace
    mask: MaskPlace | Literal["zoom_out_mask"] = Field(
        description='where the final mask\'s bits lie, or "zoom_out_mask" when it is the zoom-out mask'
    )


class JobStatus(BaseModel):
    job_id: str
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    version: int
    stage: str | None
    done: int
    total: int
    notices: list[str]
    error: str | None
    error_code: str | None
    results: list[ResultEntry]


class Info(BaseModel):
    protocol: int
    server: str
    model: dict
    devices: list[dict]
    limits: dict[str, float | int]
    sessions: Count
    memory_bytes: Count = Field(description="what the server holds for its clients; never above max_memory_bytes")
    voxel_types: list[str]
