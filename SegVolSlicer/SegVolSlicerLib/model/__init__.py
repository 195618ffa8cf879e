"""The SegVol network, one file per part (as Meta's segment_anything), and its checkpoint loader."""

from ..errors import CheckpointError
from .build import DEVICES, build_segvol, load_segvol, resolve_device
from .segvol import PRECISIONS, SegVol, default_precision

__all__ = ["DEVICES", "PRECISIONS", "CheckpointError", "SegVol", "build_segvol", "default_precision", "load_segvol",
           "resolve_device"]
