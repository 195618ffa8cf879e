"""Stand-ins for the SegVol network: FakeSegVol for fast tests of the engine's plumbing, BandSegVol with the
layout phantom for parity with the official pipeline's branches (tools/make_goldens.py --only standin).

FakeSegVol honours the model contract (encode_image, encode_text, decode, device, dtype) and its output depends on
the prompts and on the image where a real model's would: the "embedding" is a 4x-down-sampled copy of the
window, the logits say "bright voxels", shifted by the text, raised inside the box and around positive
clicks, lowered around negative ones. It counts encoder calls so tests can check the caches.
"""

from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F

from SegVolSlicerLib.model.image_encoder import WINDOW_SIZE

GRID = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in WINDOW_SIZE), indexing="ij"))


class FakeSegVol:
    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.image_calls = 0  # encoder passes
        self.images_encoded = 0  # windows encoded (a batch counts each)
        self.text_calls = 0
        self.decode_calls = []  # (boxes, points) of every decode

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        assert tuple(image.shape[1:]) == (1, *WINDOW_SIZE), image.shape
        self.image_calls += 1
        self.images_encoded += image.shape[0]
        return F.avg_pool3d(image.float(), 4)  # (B, 1, 8, 64, 64)

    def encode_text(self, names) -> torch.Tensor:
        self.text_calls += 1
        names = [names] if isinstance(names, str) else list(names)
        shifts = [(zlib.crc32(n.encode()) % 100) / 1000.0 for n in names]
        return torch.tensor(shifts, dtype=torch.float32)[:, None].expand(-1, 768).clone()

    def decode(self, image_embedding, text_embedding=None, boxes=None, points=None, upsample=True):
        assert text_embedding is not None or boxes is not None or points is not None
        self.decode_calls.append(
            (
                None if boxes is None else boxes.clone(),
                None if points is None else (points[0].clone(), points[1].clone()),
            )
        )
        logits = F.interpolate(image_embedding, size=WINDOW_SIZE, mode="nearest") - self.threshold
        if text_embedding is not None:
            logits = logits + text_embedding[:, :1, None, None, None]
        grid = GRID
        if boxes is not None:
            box = boxes.reshape(-1, 6)[0]
            if box[0] >= 0:
                inside = torch.ones(WINDOW_SIZE, dtype=torch.bool)
                for axis in range(3):
                    inside &= (grid[axis] >= box[axis]) & (grid[axis] <= box[axis + 3])
                logits = logits + torch.where(inside, 0.3, -1.0)
        if points is not None:
            coords, labels = points
            for coord, label in zip(coords.reshape(-1, 3), labels.reshape(-1)):
                if label < 0:
                    continue
                near = ((grid - coord[:, None, None, None]) ** 2).sum(0) < 8**2
                logits = logits + torch.where(near, 1.0 if label > 0 else -1.0, 0.0)
        if not upsample:
            return F.interpolate(logits, size=(32, 64, 64), mode="nearest")
        return logits


class BandSegVol:
    """A deterministic stand-in whose masks are localised, for parity with the official pipeline's branches.

    Logits are a pure function of the window image and the prompts, so the official code and the engine
    give identical numbers when they feed it identical windows: a text selects an intensity band (the
    organ's normalised value +- BAND_HALF_WIDTH) and no text selects nothing; inside a box the logits rise
    by 1.5 (with no text the whole box comes out positive), outside it (and everywhere for the sentinel
    box) they drop by 4; clicks add +-3 within CLICK_RADIUS window voxels. It serves both call styles:
    the official `model(image, text, boxes, points)` and the engine's encode_image / encode_text / decode.
    """

    BAND_HALF_WIDTH, CLICK_RADIUS = 0.02, 10.0

    def __init__(self, bands: dict[str, float]):
        self.bands = dict(bands)  # text -> normalised intensity of the organ it selects
        self.device, self.dtype = torch.device("cpu"), torch.float32

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return image.float().clone()

    def encode_text(self, names) -> torch.Tensor:
        names = [names] if isinstance(names, str) else list(names)
        return torch.tensor([[self.bands.get(n, -10.0)] * 768 for n in names], dtype=torch.float32)

    def decode(self, image_embedding, text_embedding=None, boxes=None, points=None, upsample=True):
        assert upsample, "the stand-in has no low-resolution output"
        image = image_embedding
        if text_embedding is None:
            logits = torch.full_like(image, -1.0)
        else:
            centre = text_embedding[:, :1, None, None, None]
            logits = torch.clamp(40.0 * (self.BAND_HALF_WIDTH - (image - centre).abs()), -2.0, 2.0)
        if boxes is not None:
            box = boxes.reshape(-1, 6)[0].float()
            inside = torch.ones(WINDOW_SIZE, dtype=torch.bool)
            for axis in range(3):
                inside &= (GRID[axis] >= box[axis]) & (GRID[axis] <= box[axis + 3])
            logits = torch.where(inside, logits + 1.5, logits - 4.0)
        if points is not None:
            coords, labels = points
            for coord, label in zip(coords.reshape(-1, 3).float(), labels.reshape(-1)):
                if label < 0:
                    continue
                near = ((GRID - coord[:, None, None, None]) ** 2).sum(0) <= self.CLICK_RADIUS**2
                logits = torch.where(near, logits + (3.0 if label > 0 else -3.0), logits)
        return logits

    def __call__(self, image, text=None, boxes=None, points=None):
        """The official SegVol call (zoom-out pass and the sliding window's predictor)."""
        text_embedding = None if text is None else self.encode_text(text)
        return self.decode(self.encode_image(image), text_embedding, boxes, points)


class CountingBandSegVol(BandSegVol):
    """BandSegVol whose decoder answers clicks locally (a positive click grows a ball, a negative one carves
    one), counting encoder passes and recording every decode's prompts: the correction tests' stand-in."""

    def __init__(self, bands: dict[str, float] | None = None):
        super().__init__(LAYOUT_BANDS if bands is None else bands)
        self.image_calls, self.text_calls, self.decodes = 0, 0, []

    def encode_image(self, image):
        self.image_calls += 1
        return super().encode_image(image)

    def encode_text(self, names):
        self.text_calls += 1
        return super().encode_text(names)

    def decode(self, image_embedding, text_embedding=None, boxes=None, points=None, upsample=True):
        self.decodes.append({"boxes": boxes, "points": points})
        return super().decode(image_embedding, text_embedding, boxes, points, upsample)


# Organs of the layout phantom: label -> (name, HU, ellipsoids (centre (k, j, i), semi-axes (k, j, i))).
LAYOUT_SHAPE_KJI = (40, 96, 320)
LAYOUT_ORGANS = {
    1: ("pancreas", 100, [((20, 48, 160), (6, 12, 140))]),  # wider than a window: several windows along W
    2: ("spleen", 200, [((24, 52, 286), (5, 10, 14))]),  # small, at the border: ROI widened then clamped
    3: ("kidney", 300, [((3, 60, 30), (3, 10, 12)), ((36, 40, 290), (3, 10, 14))]),  # opposite corners: empty windows
    4: ("stomach", 40, [((20, 20, 100), (5, 8, 20))]),  # soft-tissue HU: the stand-in is given no band for it
}
LAYOUT_EMPTY_BAND = 0.95  # the stomach's band: an intensity no voxel has, so its zoom-out comes out empty
# The normalised intensity of each organ of the layout phantom (as the stand-in goldens record them).
LAYOUT_BANDS = {"pancreas": 0.4999999403953552, "spleen": 0.7499999403953552, "kidney": 1.0, "stomach": 0.95}


def layout_ct():
    """A noise-free phantom (SyntheticCT) laid out so that the stand-in's masks reach every zoom-in branch."""
    import numpy as np

    from SegVolSlicerLib.testing.synthetic_ct import SyntheticCT, synthetic_ijk_to_ras

    k, j, i = np.meshgrid(*(np.arange(n) for n in LAYOUT_SHAPE_KJI), indexing="ij", sparse=True)
    body = ((j - 48) / 44.0) ** 2 + ((i - 160) / 152.0) ** 2 <= 1.0
    inner = ((j - 48) / 40.0) ** 2 + ((i - 160) / 148.0) ** 2 <= 1.0
    # Fat (the lowest foreground value, normalised to 0) around soft tissue: the body crop is the soft tissue.
    volume = np.where(inner, 40, np.where(body, -100, -1000)) + np.zeros(LAYOUT_SHAPE_KJI, dtype=np.int16)
    labels = np.zeros(LAYOUT_SHAPE_KJI, dtype=np.uint8)
    for label, (_, hu, blobs) in LAYOUT_ORGANS.items():
        for centre, semi_axes in blobs:
            inside = inner & (sum(((g - c) / a) ** 2 for g, c, a in zip((k, j, i), centre, semi_axes)) <= 1.0)
            volume[inside], labels[inside] = hu, label
    return SyntheticCT(
        volume=volume.astype(np.int16),
        labels=labels,
        ijk_to_ras=synthetic_ijk_to_ras(),
        label_names={label: name for label, (name, _, _) in LAYOUT_ORGANS.items()},
    )


# Places in the layout phantom, (i, j, k): the pancreas runs along I through two zoom-in windows; LEFT/RIGHT each
# lie in one window only.
PANCREAS_CENTRE_IJK = (160.0, 48.0, 20.0)
LEFT_IJK, RIGHT_IJK = (40.0, 48.0, 20.0), (290.0, 48.0, 20.0)


def pancreas(*clicks, labels=None, **prompts):
    """The layout phantom's pancreas as a Target: its text, and `clicks` (negative unless `labels` say)."""
    import numpy as np

    from SegVolSlicerLib.prompts import Points, Target

    labels = [0] * len(clicks) if labels is None else labels
    points = Points(np.asarray(clicks, dtype=np.float64), labels) if clicks else None
    return Target("pancreas", text="pancreas", points=points, **prompts)


def ball(shape, centre_ijk, radius):
    """The voxels (K,J,I) within `radius` of `centre_ijk`."""
    import numpy as np

    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij", sparse=True)
    ci, cj, ck = centre_ijk
    return (k - ck) ** 2 + (j - cj) ** 2 + (i - ci) ** 2 <= radius**2


def carved_by(phantom, centre_ijk=PANCREAS_CENTRE_IJK):
    """The pancreas voxels a negative click at `centre_ijk` carves (BandSegVol's ball, a voxel inside)."""
    return ball(phantom.labels.shape, centre_ijk, BandSegVol.CLICK_RADIUS - 1) & (phantom.labels == 1)


class FullGpuSegVol(FakeSegVol):
    """On a GPU that has no room: every encoder pass off the CPU runs out of memory."""

    def __init__(self, error: Exception | None = None):
        super().__init__()
        error = error or torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.device, self.precision, self.error, self.moves = torch.device("mps"), "fp16", error, []

    def to(self, device):
        self.device = torch.device(device)
        self.moves.append(str(device))
        return self

    def set_precision(self, precision):
        self.precision = (precision, self.device.type)

    def encode_image(self, image):
        if self.device.type != "cpu":
            raise self.error
        return super().encode_image(image)


class ConstantLogitSegVol(FakeSegVol):
    """Known probabilities: every voxel's logit is the constant given for the text (missing texts: -5), so the
    final probabilities are sigmoid(constant) inside the body crop and the confidence is known in advance."""

    def __init__(self, logits: dict[str, float]):
        super().__init__()
        self.logits = dict(logits)

    def encode_text(self, names) -> torch.Tensor:
        names = [names] if isinstance(names, str) else list(names)
        return torch.tensor([[self.logits.get(n, -5.0)] * 768 for n in names], dtype=torch.float32)

    def decode(self, image_embedding, text_embedding=None, boxes=None, points=None, upsample=True):
        assert upsample and text_embedding is not None, "the stand-in answers text prompts only"
        return text_embedding[:, :1, None, None, None].expand(-1, 1, *WINDOW_SIZE).clone()
