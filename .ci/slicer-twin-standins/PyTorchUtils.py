"""Stand-in for the PyTorch extension's PyTorchUtils module in the Slicer twin (.ci/slicer-twin): the member
SegVol calls, `PyTorchUtilsLogic.torchInstalled()`, decided as upstream does (torch's package metadata, then an
import). Torch itself is installed by light-the-torch (its stand-in beside this file)."""

import importlib.metadata


class PyTorchUtilsLogic:
    @staticmethod
    def torchInstalled():
        try:
            importlib.metadata.files("torch")
        except importlib.metadata.PackageNotFoundError:
            return False
        try:
            import torch  # noqa: F401
        except ModuleNotFoundError:
            return False
        return True
