"""Slicer's standard anatomy terminology for SegVol categories: segment name, colour and codes.

Pure Python over the terminology lists vendored from 3D Slicer (data/terminology/README.md), so that the command
line can write the same codes into .seg.nrrd files as the Slicer module. Slicer's own
vtkSlicerTerminologiesModuleLogic cannot be used here: it is not available outside Slicer and slicer-core.
"""

import csv
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from . import vocabulary

TERMINOLOGY_DIR = Path(__file__).parent / "data" / "terminology"
MAP_FILE = TERMINOLOGY_DIR / "segvol-terminology-map.csv"
LIST_FILES = {
    "general": TERMINOLOGY_DIR / "SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json",
    "dicom": TERMINOLOGY_DIR / "SegmentationCategoryTypeModifier-DICOM-Master.json",
}
ANATOMIC_CONTEXT_NAME = "Anatomic codes - DICOM master list"
TERMINOLOGY_ENTRY_TAG = "TerminologyEntry"  # vtkSegment.GetTerminologyEntryTagName()
# Slicer fills unset modifier colours with this grey; it means "no recommendation".
_PLACEHOLDER_RGB = (127, 127, 127)


@dataclass(frozen=True)
class Code:
    scheme: str
    value: str
    meaning: str

    @classmethod
    def from_json(cls, item: dict | None) -> "Code":
        if not item:
            return cls("", "", "")
        return cls(item["CodingSchemeDesignator"], item["CodeValue"], item["CodeMeaning"])

    def serialize(self) -> str:
        return f"{self.scheme}^{self.value}^{self.meaning}"


@dataclass(frozen=True)
class StandardTerm:
    """A SegVol category as a Slicer terminology entry."""

    label: str  # Slicer's display name, e.g. "left kidney"
    color: tuple[float, float, float] | None  # recommended colour in [0, 1]; None when the list has none
    context: str  # terminology context name
    category: Code
    type: Code
    modifier: Code

    @property
    def entry(self) -> str:
        """Serialized as vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry does (the segment tag value)."""
        empty = Code("", "", "").serialize()
        return "~".join(
            [
                self.context,
                self.category.serialize(),
                self.type.serialize(),
                self.modifier.serialize(),
                ANATOMIC_CONTEXT_NAME,
                empty,
                empty,
            ]
        )


def _rgb(item: dict) -> tuple[int, int, int] | None:
    rgb = item.get("recommendedDisplayRGBValue")
    if rgb is None or tuple(rgb) == _PLACEHOLDER_RGB:
        return None
    return tuple(int(c) for c in rgb)


def _term(context: str, category: dict, type_: dict, modifier: dict | None) -> StandardTerm:
    if modifier is None:
        label = type_.get("3dSlicerLabel") or type_["CodeMeaning"].lower()
        rgb = _rgb(type_)
    else:
        label = modifier.get("3dSlicerLabel") or f"{modifier['CodeMeaning']} {type_['CodeMeaning']}".lower()
        rgb = _rgb(modifier) or _rgb(type_)
    color = None if rgb is None else tuple(c / 255.0 for c in rgb)
    return StandardTerm(
        label, color, context, Code.from_json(category), Code.from_json(type_), Code.from_json(modifier)
    )


@cache
def _terms_by_meaning(list_key: str) -> dict[tuple[str, str], StandardTerm]:
    """(type meaning, modifier meaning) -> term, first occurrence in file order."""
    data = json.loads(LIST_FILES[list_key].read_text(encoding="utf-8"))
    context = data["SegmentationCategoryTypeContextName"]
    terms: dict[tuple[str, str], StandardTerm] = {}
    for category in data["SegmentationCodes"]["Category"]:
        for type_ in category.get("Type", []):
            terms.setdefault((type_["CodeMeaning"], ""), _term(context, category, type_, None))
            for modifier in type_.get("Modifier", []):
                terms.setdefault(
                    (type_["CodeMeaning"], modifier["CodeMeaning"]), _term(context, category, type_, modifier)
                )
    return terms


@cache
def _segvol_map() -> dict[str, tuple[str, str, str]]:
    lines = [line for line in MAP_FILE.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    return {row["segvol_name"]: (row["context"], row["type"], row["modifier"]) for row in csv.DictReader(lines)}


def standard_term(category_name: str) -> StandardTerm | None:
    """The Slicer terminology entry of a SegVol training category name, or None where none is exact."""
    mapped = _segvol_map().get(category_name)
    if mapped is None:
        return None
    list_key, type_meaning, modifier_meaning = mapped
    return _terms_by_meaning(list_key)[(type_meaning, modifier_meaning)]


def mapped_categories() -> list[str]:
    return list(_segvol_map())


def unspecified_term() -> StandardTerm:
    """The codes of a segment whose anatomy no terminology entry names (free text, clicks or a box alone):
    SCT 85756007 "Tissue" as category and type, the one concept DICOM lists both as a segmentation category
    (CID 7150) and as a type (CID 7151), and the entry Slicer gives every new segment."""
    return _terms_by_meaning("general")[("Tissue", "")]


@dataclass(frozen=True)
class SegmentLook:
    """How a segment looks, in Slicer, in .seg.nrrd files and in DICOM SEG alike."""

    name: str
    color: tuple[float, float, float]
    term: StandardTerm  # its codes (unspecified_term() where no entry names its anatomy)

    @property
    def terminology_entry(self) -> str:
        """The TerminologyEntry segment tag."""
        return self.term.entry


def look_for_text(text: str) -> SegmentLook:
    """Slicer's standard anatomy name, colour and codes where the (resolved) name maps to them; otherwise the
    training name (or the text as typed) with the vocabulary's fixed colour and the unspecified codes."""
    training_name, known = vocabulary.resolve_name(text)
    term = standard_term(training_name) if known else None
    if term is None:
        return SegmentLook(training_name, vocabulary.colour_for(training_name), unspecified_term())
    color = term.color if term.color is not None else vocabulary.colour_for(training_name)
    return SegmentLook(term.label, color, term)


def look_for_segment(name: str, text: str | None) -> SegmentLook:
    """A result's segment: named `name`, coloured and coded as its text's (look_for_text), or, prompted by
    clicks or a box alone, with the vocabulary's colour for the name and the unspecified codes."""
    if text is not None:
        look = look_for_text(text)
        return SegmentLook(name, look.color, look.term)
    return SegmentLook(name, vocabulary.colour_for(name), unspecified_term())
