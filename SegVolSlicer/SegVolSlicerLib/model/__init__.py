"""The SegVol network, one file per part (as Meta's segment_anything), and its checkpoint loader."""

from ..errors import CheckpointError
from .build import build_segvol, load_segvol
from .segvol import SegVol

__all__ = ["CheckpointError", "SegVol", "build_segvol", "load_segvol"]
