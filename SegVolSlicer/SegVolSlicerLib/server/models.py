"""Request bodies (they make the OpenAPI schema at /docs). Constrained, so that every malformed request is a
422 with the field named: finite numbers only, rows of the lengths the arrays need, labels 0 or 1."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from .. import wire

Finite = Annotated[float, Field(allow_inf_nan=False)]
Coordinates = Annotated[list[Finite], Field(min_length=3, max_length=3, description="(i, j, k)")]
MatrixRow = Annotated[list[Finite], Field(min_length=4, max_length=4)]
Hex64 = Annotated[str, Field(pattern="^[0-9a-f]{64}$")]


class SessionRequest(BaseModel):
    shape: list[int] = Field(min_length=3, max_length=3, description="(K, J, I) voxels")
    dtype: Literal[wire.VOXEL_TYPES] = Field(description="voxel type (little-endian)")
    ijk_to_ras: list[MatrixRow] = Field(min_length=4, max_length=4, description="4x4 IJK-to-RAS matrix")
    sha256: Hex64 = Field(description="sha256 of the upload frame (wire.frame_hash)")


class ReuseRequest(BaseModel):
    proof: Hex64 = Field(
        description="HMAC-SHA256 of the volume's voxels (wire.voxel_proof) keyed by the session's nonce"
    )


class PointsBody(BaseModel):
    ijk: list[Coordinates] = Field(description="(N, 3) voxel coordinates (i, j, k)")
    labels: list[Literal[0, 1]] = Field(description="1 positive, 0 negative")


class BoxBody(BaseModel):
    ijk_min: Coordinates
    ijk_max: Coordinates


class TargetBody(BaseModel):
    name: str = Field(min_length=1)
    text: str | None = None
    points: PointsBody | None = None
    box: BoxBody | None = None


class JobRequest(BaseModel):
    targets: list[TargetBody] = Field(min_length=1)
    zoom_in: bool = True
    refine: bool = Field(
        False,
        description="correct the session's previous result of each target around its new clicks (a mode "
        "beyond the official pipeline; a target without a previous result runs the official pipeline)",
    )
