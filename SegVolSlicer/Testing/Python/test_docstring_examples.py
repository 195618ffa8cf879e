"""The docstring examples of the package run as written (`>>>` examples, checked with doctest).

Guards: an example whose printed result went stale (e.g. a float shown rounded that Python prints in full).
"""

import doctest
import importlib
from pathlib import Path

import pytest

import SegVolSlicerLib

PACKAGE = Path(SegVolSlicerLib.__file__).parent
WITH_EXAMPLES = sorted(
    ".".join(("SegVolSlicerLib", *path.relative_to(PACKAGE).with_suffix("").parts))
    for path in PACKAGE.rglob("*.py")
    if ">>> " in path.read_text(encoding="utf-8")
)


def test_examples_are_found():
    assert "SegVolSlicerLib.clinical.statistics" in WITH_EXAMPLES


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted and result.failed == 0, f"{name}: {result.failed} example(s) failed (see above)"
