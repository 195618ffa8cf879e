"""Every Qt/CTK/Slicer member that SegVolSlicer.py, the panel's section files (SegVolSlicerLib/slicer/) and the
.ui use exists in Slicer 5.10 and 5.12 (the members in Testing/Data/slicer-widget-api.json, extracted from their
sources by tools/extract_widget_api.py).

What it guards: a misspelled or removed member (`self.ui.<widget>.<member>`, a `connect("signal(args)")`, a
.ui class or property, a `qt.`/`ctk.`/`slicer.` name) that only the application would find, in any file of the
panel (not only the module file); and stand-ins that accept what the application refuses.
"""

import ast
import re
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import slicer
import slicer_app_standins
from slicer_app_standins import CLASSES, Widget
from slicer_core_env import slicer_module  # noqa: F401  (fixture)

MODULE_DIR = Path(__file__).resolve().parents[2]
# The module file and every file of the Slicer wing: the files that can touch Qt, CTK and the application.
PANEL_FILES = [MODULE_DIR / "SegVolSlicer.py", *sorted((MODULE_DIR / "SegVolSlicerLib" / "slicer").glob("*.py"))]
SOURCE = "\n".join(path.read_text(encoding="utf-8") for path in PANEL_FILES)
# slicer.util's functions that need the application (the stand-ins install them)
APP_ONLY_UTIL = {"mainWindow", "errorDisplay", "infoDisplay", "confirmYesNoDisplay", "showStatusMessage", "loadUI"}
APP_MODULES = {"qt", "ctk", "slicer.i18n", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper"}


def touches_the_application(path) -> bool:
    """Imports Qt/CTK/Slicer's application modules, or reads `self.ui`, `slicer.app`, `slicer.modules`, or
    slicer.util's dialogs and windows (code only: comments and docstrings do not count)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import) and any(alias.name in APP_MODULES for alias in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.module in APP_MODULES:
            return True
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in {("self", "ui"), ("slicer", "app"), ("slicer", "modules")}:
                return True
        if isinstance(node, ast.Attribute) and node.attr in APP_ONLY_UTIL:
            return True
    return False


UI_FILE = MODULE_DIR / "Resources" / "UI" / "SegVolSlicer.ui"
UI_CLASSES = {w.get("name"): w.get("class") for w in ElementTree.parse(UI_FILE).iter("widget")}


def members(class_name):
    properties, signals, methods = slicer_app_standins._members(class_name)
    return set(properties) | set(methods)


def test_every_file_that_touches_the_application_is_scanned():
    """A section file outside the scanned set would escape every check below."""
    package = MODULE_DIR / "SegVolSlicerLib"
    touching = {path for path in package.rglob("*.py") if touches_the_application(path)}
    assert touching, "the pattern finds nothing: it no longer matches how the panel imports Qt"
    assert touching <= set(PANEL_FILES), sorted(str(p) for p in touching - set(PANEL_FILES))
    sections = {"jobs", "run_on", "results_section", "prompt_tools", "editor", "installs"}
    assert sections <= {path.stem for path in PANEL_FILES}


def test_every_ui_widget_member_exists():
    used = set(re.findall(r"self\.ui\.(\w+)\.(\w+)", SOURCE))
    assert used
    for widget, member in used:
        assert member in members(UI_CLASSES[widget]), f"{UI_CLASSES[widget]} ({widget}) has no {member}"


def test_every_connected_signal_exists():
    for widget, signal in re.findall(r"self\.ui\.(\w+)\.connect\(\"([^\"]+)\"", SOURCE):
        assert signal in slicer_app_standins._members(UI_CLASSES[widget])[1], f"{widget}: {signal}"
    all_signals = set().union(*(slicer_app_standins._members(name)[1] for name in CLASSES))
    for signal in re.findall(r"\.connect\(\"([^\"]+)\"", SOURCE):
        assert signal in all_signals, signal


def test_every_ui_class_and_property_exists():
    slicer_app_standins.load_ui(UI_FILE)  # refuses unknown classes and properties
    assert set(UI_CLASSES.values()) <= set(CLASSES)


def test_every_qt_ctk_and_slicer_name_exists(slicer_module):  # noqa: F811
    code = "\n".join(line for line in SOURCE.splitlines() if not line.startswith(("from ", "import ")))
    for module_name, attribute_path in re.findall(r"(?<![\w.])(qt|ctk|slicer)\.((?:\w+\.)*\w+)", code):
        value = {"qt": sys.modules["qt"], "ctk": sys.modules["ctk"], "slicer": slicer}[module_name]
        for part in attribute_path.split("."):
            if module_name == "slicer" and part in ("app", "mrmlScene", "modules"):
                break  # the application objects; their members are checked by running the panel
            value = getattr(value, part)


@pytest.mark.parametrize(
    "mistake, error",
    [
        ("misspelled property", AttributeError),
        ("unknown method", AttributeError),
        ("unknown signal", AttributeError),
        ("unknown class", AttributeError),
        ("a C++ setter that is not a slot", AttributeError),
        ("a slot with too few arguments", TypeError),
        ("a slot with too many arguments", TypeError),
    ],
)
def test_stand_ins_refuse_what_slicer_refuses(mistake, error):
    """PythonQt calls only properties, signals, public slots, Q_INVOKABLE methods and decorators of Slicer's
    and CTK's classes, with the declared number of arguments."""
    button = Widget("QPushButton", "applyButton")
    selector = Widget("qMRMLNodeComboBox", "inputVolumeSelector")
    with pytest.raises(error):
        if mistake == "misspelled property":
            button.txt = "Segment"
        elif mistake == "unknown method":
            button.setPlaceModeEnabled(True)
        elif mistake == "unknown signal":
            button.connect("clickd(bool)", print)
        elif mistake == "unknown class":
            Widget("QPushButon")
        elif mistake == "a C++ setter that is not a slot":
            selector.setNoneEnabled(True)  # a public method, not a slot: set `selector.noneEnabled` instead
        elif mistake == "a slot with too few arguments":
            selector.setCurrentNode()
        else:
            Widget("qMRMLSegmentEditorWidget").setSegmentationNode(None, None)
    button.text = "Segment"
    assert button.text == "Segment" and button.connect("clicked(bool)", print)
    selector.noneEnabled = True
    selector.setCurrentNode(None)
