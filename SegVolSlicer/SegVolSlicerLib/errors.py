"""User-facing errors: each carries one message that says what went wrong and what to do."""


class SegVolError(Exception):
    """Base of every error caused by user input or environment; shown as one line, never a traceback."""


class InputError(SegVolError):
    """A volume, prompt, label or output path the user gave cannot be used."""


class CheckpointError(SegVolError):
    """A weights file or folder is missing, unreadable, corrupt or not SegVol."""


class Cancelled(SegVolError):
    """The user cancelled a running segmentation."""
