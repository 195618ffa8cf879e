"""SegVolSlicerLib: SegVol inference for 3D Slicer and the command line, free of Qt."""

__version__ = "0.1.0"
