"""The SegVol server protocol's wire formats, shared by the server and the torch-free client.

Version 1: JSON for sessions, prompts and job status; the volume travels once per session as a blosc2 array
frame (LZ4, shuffled), named by the frame's sha256; each result mask travels as the bounding box of its voxels
plus the box's bits, packed eight to a byte and blosc2-compressed (a zoom-out-only result's final mask is its
zoom-out mask and travels once). Imports numpy and blosc2 only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
from collections.abc import Hashable

import numpy as np

from .errors import InputError
from .prompts import Box, Points, Target

PROTOCOL_VERSION = 1
PROTOCOL_HEADER = "X-SegVol-Protocol"
API = f"/v{PROTOCOL_VERSION}"
# Voxel types a volume may be uploaded in (little-endian, as numpy names them).
VOXEL_TYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
# A result key as it travels: opaque to the server (result_key_string makes one from any Hashable).
RESULT_KEY_PATTERN = "^[0-9A-Za-z_.:-]{1,128}$"


def voxel_type(voxels: np.ndarray) -> str:
    name = np.dtype(voxels.dtype).newbyteorder("=").name
    if name not in VOXEL_TYPES:
        raise InputError(f"volume voxels of type {voxels.dtype} cannot be sent: use one of {', '.join(VOXEL_TYPES)}")
    return name


def wire_voxels(voxels: np.ndarray) -> np.ndarray:
    """The volume as it travels: C-ordered, little-endian."""
    voxels = np.asarray(voxels)
    return np.ascontiguousarray(voxels, dtype=np.dtype(voxel_type(voxels)).newbyteorder("<"))


def frame_hash(frame: bytes) -> str:
    """Names an upload: equal frames hold equal voxels, so a server holding a frame's hash holds its volume.
    The frame, not the voxels, is hashed: a third of the bytes, and checked before anything is decompressed."""
    return hashlib.sha256(frame).hexdigest()


def voxel_proof(nonce: bytes, voxels: np.ndarray, samples: int = 4096) -> str:
    """Proof that a client holds a volume's voxels, not only its hash (which anyone may have seen): the
    HMAC-SHA256, keyed by the nonce the server gave the session, of the volume's shape and of `samples` of its
    voxels at places the nonce draws (so the proof costs the same for any size of volume)."""
    voxels = np.asarray(voxels)
    seed = int.from_bytes(hashlib.sha256(nonce).digest()[:8], "little")
    places = np.random.default_rng(seed).integers(0, max(voxels.size, 1), samples)
    drawn = voxels[np.unravel_index(places, voxels.shape)] if voxels.size else np.zeros(samples, voxels.dtype)
    message = repr(tuple(voxels.shape)).encode() + memoryview(wire_voxels(drawn)).cast("B").tobytes()
    return hmac.new(nonce, message, hashlib.sha256).hexdigest()


def pack_volume(voxels: np.ndarray) -> bytes:
    import blosc2

    # LZ4 at level 1: a CT compresses to about a third at ~0.3 GB/s, faster than a gigabit link. One thread:
    # blosc2's threads lay blocks out in the order they finish, and equal volumes must give equal frames.
    params = blosc2.CParams(codec=blosc2.Codec.LZ4, clevel=1, filters=[blosc2.Filter.SHUFFLE], nthreads=1)
    return blosc2.asarray(wire_voxels(voxels), cparams=params).to_cframe()


def unpack_volume(frame: bytes, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """The voxels of an uploaded frame; its declared shape and type are checked before anything is
    decompressed, so a small frame cannot expand into more memory than the session announced."""
    import blosc2

    try:
        array = blosc2.ndarray_from_cframe(frame)  # bytes or the bytearray it streamed into: no copy
    except Exception as error:  # blosc2 raises several kinds of errors on garbage
        raise InputError(
            f"the upload is not a blosc2 array frame ({error}): send the volume as the client does (wire.pack_volume)"
        ) from None
    if tuple(array.shape) != tuple(shape) or array.dtype != np.dtype(dtype):
        raise InputError(
            f"the upload holds a {array.dtype} array of shape {tuple(array.shape)} but the session "
            f"was opened for {dtype} {tuple(shape)}: upload the volume the session was opened with"
        )
    _check_chunk_sizes(array)
    try:
        return np.ascontiguousarray(array[...])
    except Exception as error:
        raise InputError(f"the upload is corrupt ({error}): upload the volume again") from None


def _check_chunk_sizes(array) -> None:
    """Refuses a frame whose chunks or blocks would decompress into more than the declared array: only the
    frame's metadata (array chunks and blocks, each chunk's header) is read, nothing is decompressed. A tiny
    frame could otherwise declare a 2 x 2 x 2 array in one 400^3 chunk. Chunks are padded to whole blocks,
    so a chunk may hold somewhat more than its share of the array, never more than twice the array (+1 MiB)."""
    import blosc2

    schunk, itemsize = array.schunk, array.dtype.itemsize
    padded_chunk = math.prod(-(-c // b) * b for c, b in zip(array.chunks, array.blocks)) * itemsize
    expected_chunks = math.prod(-(-n // c) for n, c in zip(array.shape, array.chunks))
    sizes_fit = (
        all(0 < b <= c <= n for b, c, n in zip(array.blocks, array.chunks, array.shape))
        and padded_chunk <= 2 * array.size * itemsize + 2**20
        and schunk.typesize == itemsize
        and schunk.chunksize == padded_chunk
        and schunk.blocksize <= padded_chunk
        and schunk.nchunks == expected_chunks
    )
    for index in range(schunk.nchunks if sizes_fit else 0):
        nbytes, _, blocksize = blosc2.get_cbuffer_sizes(schunk.get_lazychunk(index))
        sizes_fit = sizes_fit and nbytes == padded_chunk and blocksize <= padded_chunk
    if not sizes_fit:
        raise InputError(
            f"the upload's chunks {array.chunks} (blocks {array.blocks}) do not fit the declared {array.dtype} "
            f"array of shape {tuple(array.shape)}: send the volume as the client does (wire.pack_volume)"
        )


def mask_bounds(
    mask: np.ndarray, within: tuple[slice, slice, slice] | None = None
) -> tuple[int, int, int, int, int, int] | None:
    """(k0, j0, i0, k1, j1, i1), half-open, of the nonzero voxels; None for an empty mask. `within`: slices of
    the mask outside which it is known to be empty (the engine's body crop), to search less."""
    offset = [0, 0, 0] if within is None else [s.indices(n)[0] for s, n in zip(within, mask.shape)]
    region = mask if within is None else mask[within]
    columns = np.logical_or.reduce(region, axis=0)  # (J, I): one pass over the volume, then small arrays
    if not columns.any():
        return None
    j = np.flatnonzero(columns.any(axis=1))
    i = np.flatnonzero(columns.any(axis=0))
    slab = region[:, j[0] : j[-1] + 1, i[0] : i[-1] + 1]
    k = np.flatnonzero(slab.reshape(len(slab), -1).any(axis=1))
    k0, j0, i0 = offset
    return k0 + int(k[0]), j0 + int(j[0]), i0 + int(i[0]), k0 + int(k[-1]) + 1, j0 + int(j[-1]) + 1, i0 + int(i[-1]) + 1


def pack_mask(mask: np.ndarray, within: tuple[slice, slice, slice] | None = None) -> tuple[list[int] | None, bytes]:
    """A binary mask as (bounding box, compressed bits of the box)."""
    import blosc2

    bounds = mask_bounds(mask, within)
    if bounds is None:
        return None, b""
    k0, j0, i0, k1, j1, i1 = bounds
    bits = np.packbits(mask[k0:k1, j0:j1, i0:i1] != 0)
    return list(bounds), blosc2.compress2(bits, typesize=1, codec=blosc2.Codec.LZ4, clevel=5)


def unpack_mask(shape: tuple[int, int, int], bounds, data: bytes) -> np.ndarray:
    """The (K, J, I) uint8 mask from pack_mask's box and bits; InputError for a box outside `shape` or bits
    that would decompress into more (or less) than the box (checked before anything is decompressed)."""
    import blosc2

    mask = np.zeros(shape, dtype=np.uint8)
    if bounds is None:
        return mask
    k0, j0, i0, k1, j1, i1 = (int(b) for b in bounds)
    if not all(0 <= a < b <= n for a, b, n in zip((k0, j0, i0), (k1, j1, i1), shape)):
        raise InputError(f"mask bounds {list(bounds)} do not lie inside the volume's {tuple(shape)} voxels")
    box_shape = (k1 - k0, j1 - j0, i1 - i0)
    expected = -(-math.prod(box_shape) // 8)
    try:
        declared = blosc2.get_cbuffer_sizes(data)[0]
    except Exception:  # blosc2 raises several kinds of errors on garbage
        declared = None
    if declared != expected:
        raise InputError(f"mask bits of {declared} bytes for a box of {expected}: send masks as wire.pack_mask does")
    bits = np.frombuffer(blosc2.decompress2(data), dtype=np.uint8)
    mask[k0:k1, j0:j1, i0:i1] = np.unpackbits(bits, count=math.prod(box_shape)).reshape(box_shape)
    return mask


def mask_to_json(mask: np.ndarray) -> dict:
    """A mask inside a JSON body (a job's current mask): pack_mask's box, its bits in base64."""
    bounds, bits = pack_mask(mask)
    return {"bounds": bounds, "bits": base64.b64encode(bits).decode("ascii")}


def mask_from_json(data: dict, shape: tuple[int, int, int]) -> np.ndarray:
    try:
        bits = base64.b64decode(data["bits"], validate=True)
    except (binascii.Error, ValueError):
        raise InputError("a mask's bits are not base64: send masks as wire.mask_to_json does") from None
    return unpack_mask(shape, data["bounds"], bits)


def result_key_string(key: Hashable) -> str:
    """A face's result key (e.g. a segmentation node and segment ID) as it travels: the sha256 of its repr,
    so nothing of the client's scene reaches the server."""
    return hashlib.sha256(repr(key).encode()).hexdigest()


def pack_result_masks(result, offset: int = 0) -> tuple[dict, list[bytes]]:
    """A result's final and zoom-out masks as a job status entry's `mask` and `zoom_out_mask` (bounding box,
    offset and length in the job's masks bytes, which follow `offset`), and the bytes; a zoom-out-only result's
    final mask is its zoom-out mask and travels once (`mask` is then the string "zoom_out_mask")."""
    entry, blobs = {}, []
    masks = [("zoom_out_mask", result.zoom_out_mask)]
    if result.mask is result.zoom_out_mask:
        entry["mask"] = "zoom_out_mask"
    else:
        masks.append(("mask", result.mask))
    for kind, mask in masks:
        bounds, bits = pack_mask(mask, within=result.crop)  # empty outside the body crop
        entry[kind] = {"bounds": bounds, "offset": offset, "length": len(bits)}
        blobs.append(bits)
        offset += len(bits)
    return entry, blobs


def unpack_result_masks(entry: dict, bits: bytes, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(mask, zoom_out_mask) of a status entry from pack_result_masks; one array when they travelled once."""

    def mask(kind: str) -> np.ndarray:
        where = entry[kind]
        start = where["offset"]
        return unpack_mask(shape, where["bounds"], bits[start : start + where["length"]])

    zoom_out_mask = mask("zoom_out_mask")
    return (zoom_out_mask if entry["mask"] == "zoom_out_mask" else mask("mask")), zoom_out_mask


def target_to_json(
    target: Target, result_key: str | None = None, correct: bool = False, current_mask: np.ndarray | None = None
) -> dict:
    """A target as the job request carries it (floats survive JSON exactly: results stay bit for bit), with
    where the server keeps its result (`result_key`, from result_key_string), whether to correct that result,
    and the segment as it is now (a correction starts from it)."""
    body = {
        "name": target.name,
        "text": target.text,
        "points": None
        if target.points is None
        else {"ijk": target.points.ijk.tolist(), "labels": target.points.labels.tolist()},
        "box": None
        if target.box is None
        else {"ijk_min": list(target.box.ijk_min), "ijk_max": list(target.box.ijk_max)},
    }
    if result_key is not None:
        body["result_key"] = result_key
    if correct:
        body["correct"] = True
    if current_mask is not None:
        body["current_mask"] = mask_to_json(current_mask)
    return body


def target_from_json(data: dict) -> Target:
    """The Target of a request's target (InputError if it is not one)."""
    points, box = data.get("points"), data.get("box")
    return Target(
        name=data["name"],
        text=data.get("text"),
        points=None
        if points is None
        else Points(
            np.asarray(points["ijk"], dtype=np.float64).reshape(-1, 3), np.asarray(points["labels"], dtype=np.int64)
        ),
        box=None if box is None else Box(tuple(box["ijk_min"]), tuple(box["ijk_max"])),
    )
