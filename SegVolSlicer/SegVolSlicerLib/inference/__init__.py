"""The inference engine, one module per stage of the data flow:

preprocess (normalise, crop, zoom-out image) -> model_space (coordinates) -> prompt_mapping (prompts in
model space) -> zoom_out -> roi -> windows + window_prompts -> zoom_in -> merge, driven and cached by
session. Nothing here knows about Slicer or Qt.
"""

from .session import SegmentationResult, SegVolSession

__all__ = ["SegVolSession", "SegmentationResult"]
