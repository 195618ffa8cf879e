"""SegVol's text vocabulary: the 222 training category names, common synonyms, and a colour per name.

The model accepts any text, but it only learnt the raw label names of its 25 training datasets
(data/segvol-categories.txt). `resolve_name` maps what a user types onto one of those spellings, so that
"Gallbladder", "IVC" or "L1" prompt the model with words it was trained on; anything else runs unchanged,
flagged as unknown.
"""

from __future__ import annotations

import colorsys
import hashlib
import re
from functools import lru_cache
from importlib import resources

_CATEGORIES_FILE = "segvol-categories.txt"

# User spelling (lower case) -> training name. Training names themselves resolve to themselves (whatever
# their case) unless listed here; "gallbladder" is a training name too, but "gall bladder" is the spelling of
# most of the datasets that label it, so typed names converge on it.
SYNONYMS = {
    "gallbladder": "gall bladder",
    "gall-bladder": "gall bladder",
    "ivc": "postcava",
    "vena cava inferior": "postcava",
    "inferior vena cava (ivc)": "postcava",
    "oesophagus": "esophagus",
    "kidney l": "left kidney",
    "kidney r": "right kidney",
    "l kidney": "left kidney",
    "r kidney": "right kidney",
    "lt kidney": "left kidney",
    "rt kidney": "right kidney",
    "left adrenal": "left adrenal gland",
    "right adrenal": "right adrenal gland",
    "adrenal glands": "adrenal",
    "lung left": "left lung",
    "lung right": "right lung",
    "both lungs": "lungs",
    "both kidneys": "kidneys",
    "bladder urinary": "urinary bladder",
    "small intestine": "small bowel",
    "bowel": "intestine",
    "large intestine": "colon",
    "large bowel": "colon",
    "portal and splenic vein": "portal vein and splenic vein",
    "thyroid gland": "thyroid",
    "mandible": "bone mandible",
    "brain stem": "brainstem",
    "cord": "spinal cord",
    "pulmonary trunk": "pulmonary artery",
    "windpipe": "trachea",
    "myocardium": "heart myocardium",
    "tumour": "tumor",
    "kidney tumour": "kidney tumor",
    "liver tumour": "liver tumor",
    "liver lesion": "liver tumor",
    "liver cysts": "liver cyst",
    "lung tumor": "lung tumours",
    "lung tumors": "lung tumours",
    "lung nodule": "lung tumours",
    "pancreas tumor": "pancreatic lesion",
    "pancreatic tumor": "pancreatic lesion",
    "colon tumor": "colon cancer",
    "hepatic vessel": "hepatic vessels",
    "kidney stones": "stones",
    "femoral head left": "head of femur left",
    "femoral head right": "head of femur right",
}

# Colours (RGB 0-255) of common anatomy, as in 3D Slicer's general anatomy terminology; other names get a
# fixed colour derived from the name.
_COLOURS = {
    "liver": (221, 130, 101),
    "spleen": (157, 108, 162),
    "pancreas": (249, 180, 111),
    "left kidney": (185, 102, 83),
    "right kidney": (185, 102, 83),
    "kidney": (185, 102, 83),
    "kidneys": (185, 102, 83),
    "kidney left": (185, 102, 83),
    "kidney right": (185, 102, 83),
    "gall bladder": (139, 150, 98),
    "gallbladder": (139, 150, 98),
    "stomach": (216, 132, 105),
    "aorta": (224, 97, 76),
    "postcava": (0, 151, 206),
    "inferior vena cava": (0, 151, 206),
    "portal vein and splenic vein": (0, 151, 206),
    "esophagus": (211, 171, 143),
    "duodenum": (255, 253, 229),
    "bladder": (222, 154, 132),
    "urinary bladder": (222, 154, 132),
    "heart": (206, 110, 84),
    "left lung": (197, 165, 145),
    "right lung": (197, 165, 145),
    "lungs": (197, 165, 145),
    "colon": (204, 168, 143),
    "small bowel": (205, 167, 142),
    "intestine": (205, 167, 142),
    "rectum": (204, 142, 178),
    "left adrenal gland": (249, 186, 150),
    "right adrenal gland": (249, 186, 150),
    "adrenal": (249, 186, 150),
    "trachea": (182, 228, 255),
    "spinal cord": (244, 214, 49),
    "brain": (250, 250, 225),
    "thyroid": (220, 188, 146),
    "bone": (241, 214, 145),
    "sacrum": (241, 214, 145),
    "prostate or uterus": (230, 158, 140),
    "tumor": (144, 238, 144),
    "liver tumor": (144, 238, 144),
    "kidney tumor": (144, 238, 144),
}


@lru_cache(maxsize=1)
def category_names() -> tuple[str, ...]:
    """The 222 training names, in the order of data/segvol-categories.txt."""
    text = resources.files("SegVolSlicerLib").joinpath("data", _CATEGORIES_FILE).read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def _normalise(text: str) -> str:
    return re.sub(r"[\s_]+", " ", text.strip()).lower()


@lru_cache(maxsize=1)
def _lookup() -> dict[str, str]:
    lookup = {_normalise(name): name for name in category_names()}
    for level, count in (("C", 7), ("T", 12), ("L", 5)):  # "L1", "L1 vertebra", "vertebra L1" -> "vertebrae L1"
        for n in range(1, count + 1):
            name = f"vertebrae {level}{n}"
            for spelling in (f"{level}{n}", f"{level}{n} vertebra", f"vertebra {level}{n}", f"{level}{n} vertebrae"):
                lookup.setdefault(_normalise(spelling), name)
    lookup.update(SYNONYMS)
    return lookup


def resolve_name(user_text: str) -> tuple[str, bool]:
    """(training name, True) for a known name or synonym; (the text, stripped, False) for anything else."""
    key = _normalise(user_text)
    if key in _lookup():
        return _lookup()[key], True
    return " ".join(user_text.split()), False


def unknown_name_warning(text: str) -> str:
    return (
        f"'{text}' is not one of SegVol's 222 training names: it is used as typed, expect a weaker result "
        "(see the list of known names)"
    )


def resolve_text(user_text: str | None) -> tuple[str | None, list[str]]:
    """The text to prompt with (the training name for a known name or synonym, else the text as typed) and
    the warning for a text SegVol was not trained on."""
    if user_text is None:
        return None, []
    text, known = resolve_name(user_text)
    return text, [] if known else [unknown_name_warning(text)]


def colour_for(name: str) -> tuple[float, float, float]:
    """A fixed RGB colour (0..1) for a name: the anatomy colour of its training name, else one derived
    from the name (same name, same colour, across runs and machines)."""
    training_name, _ = resolve_name(name)
    if training_name in _COLOURS:
        return tuple(c / 255.0 for c in _COLOURS[training_name])
    digest = hashlib.sha256(training_name.lower().encode()).digest()
    hue = digest[0] / 255.0
    return colorsys.hsv_to_rgb(hue, 0.55 + 0.3 * digest[1] / 255.0, 0.75 + 0.2 * digest[2] / 255.0)
