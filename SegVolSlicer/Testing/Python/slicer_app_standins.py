"""Stand-ins for the parts of 3D Slicer that only the application has (qt, ctk, the widget classes,
slicer.ScriptedLoadableModule, slicer.parameterNodeWrapper, slicer.i18n), installed by slicer_core_env.

The widget stand-ins know only the members that Slicer 5.10.0 and 5.12.3 both have (Testing/Data/
slicer-widget-api.json, made by tools/extract_widget_api.py) and that PythonQt exposes: properties, signals,
public slots and Q_INVOKABLE methods of Slicer's and CTK's classes (a public C++ setter that is not a slot, such
as qMRMLNodeComboBox::setNoneEnabled, is not callable: set the property), every public method of Qt's own
classes. Reading, writing or calling anything else, a slot called with a wrong number of arguments, connecting
an unknown signal, or a .ui file with an unknown class or property raises AttributeError or TypeError, as
PythonQt would in the application. Members behave simply: properties and `setX`/`x()` pairs hold values,
methods returning a known class return a stand-in of it, other calls are recorded in `standin_calls(widget)`.
Signals fire with `emit(widget, "signal(args)", ...)`; `process_events()` runs the QTimer.singleShot calls.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import sys
import types
import unittest
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Annotated, get_args, get_origin

import slicer

API = json.loads((Path(__file__).resolve().parents[1] / "Data" / "slicer-widget-api.json").read_text())
CLASSES = API["classes"]
# Qt Designer writes a layout's margins as these; uic turns them into setContentsMargins.
UI_LAYOUT_PROPERTIES = {"leftMargin", "topMargin", "rightMargin", "bottomMargin", "spacing"}
UI_SPACER_PROPERTIES = {"orientation", "sizeHint", "sizeType"}
UI_DYNAMIC_PROPERTIES = {"SlicerParameterName"}  # read by slicer.parameterNodeWrapper's connectGui
_DEFAULTS = {"bool": False, "int": 0, "double": 0.0, "QString": "", "QStringList": ()}
_PENDING = []  # QTimer.singleShot callbacks, run by process_events()


def _members(class_name: str) -> tuple[dict, set, dict]:
    """(properties, signals, methods) of a class and its bases."""
    entry = CLASSES[class_name]
    properties, signals, methods = dict(entry["properties"]), set(entry["signals"]), dict(entry["methods"])
    for base in entry["bases"]:
        if base in CLASSES:
            more = _members(base)
            properties = {**more[0], **properties}
            signals |= more[1]
            methods = {**more[2], **methods}
    return properties, signals, methods


def _getter_for(setter: str, state: dict) -> str | None:
    """The member that `setX` sets: x, or its case variant (setMRMLScene -> mrmlScene)."""
    if not setter.startswith("set") or len(setter) == 3:
        return None
    wanted = setter[3:].lower()
    return next((name for name in (*state["properties"], *state["methods"]) if name.lower() == wanted), None)


class Widget:
    """A Qt/CTK/Slicer object that has only its class's real members."""

    def __init__(self, class_name: str, object_name: str = ""):
        if class_name not in CLASSES:
            raise AttributeError(f"no class {class_name} in Slicer 5.10/5.12 (Testing/Data/slicer-widget-api.json)")
        properties, signals, methods = _members(class_name)
        state = {
            "class": class_name,
            "properties": properties,
            "signals": signals,
            "methods": methods,
            "values": {"objectName": object_name},
            "connections": {},
            "calls": [],
            "children": {},
        }
        object.__setattr__(self, "_standin", state)

    def __repr__(self):
        return f"<{self._standin['class']} stand-in {self._standin['values'].get('objectName', '')!r}>"

    def __getattr__(self, name):
        state = self._standin
        if name in state["properties"]:  # PythonQt: a property wins over its same-named getter
            return self._value(name)
        if name in state["methods"]:
            return lambda *args: self._call(name, *args)
        raise AttributeError(f"{state['class']} has no member '{name}' in Slicer 5.10/5.12")

    def __setattr__(self, name, value):
        if name not in self._standin["properties"]:
            raise AttributeError(f"{self._standin['class']} has no property '{name}' in Slicer 5.10/5.12")
        self._standin["values"][name] = value
        if (self._standin["class"], name) == ("ctkPathLineEdit", "currentPath"):
            _path_edited(self)

    def _value(self, name):
        state = self._standin
        if name in state["values"]:
            return state["values"][name]
        return _DEFAULTS.get(state["properties"].get(name))

    def _call(self, name, *args):
        state = self._standin
        counts = state["methods"].get(name, {}).get("args")
        if counts is not None and not counts[0] <= len(args) <= counts[1]:
            raise TypeError(f"{state['class']}.{name} takes {counts[0]} to {counts[1]} arguments, not {len(args)}")
        state["calls"].append((name, args))
        if name == "connect":
            signal, slot = args
            if signal not in state["signals"]:
                raise AttributeError(f"{state['class']} has no signal {signal} in Slicer 5.10/5.12")
            state["connections"].setdefault(signal, []).append(slot)
            return True
        if name == "disconnect" and len(args) == 2:  # as Qt: the connection of that signal to that slot goes
            signal, slot = args
            connected = state["connections"].get(signal, [])
            if slot in connected:
                connected.remove(slot)
                return True
            return False
        if name == "setRange":
            state["values"]["minimum"], state["values"]["maximum"] = args
            return None
        getter = _getter_for(name, state)
        if getter is not None and len(args) == 1:
            state["values"][getter] = args[0]
            return None
        if name in ("show", "hide"):
            state["values"]["visible"] = name == "show"
            return None
        if name in ("start", "stop") and "active" in state["properties"]:  # QTimer
            state["values"]["active"] = name == "start"
            return None
        returned = state["methods"].get(name, {}).get("returns")
        if not args and name in state["values"]:
            return state["values"][name]
        if not args and name in state["properties"]:
            return self._value(name)
        if returned in CLASSES:
            if name not in state["children"]:
                state["children"][name] = Widget(returned)
            return state["children"][name]
        return _DEFAULTS.get(returned)


def _path_edited(widget: Widget) -> None:
    """ctkPathLineEdit after its text changed: its validator is a regular expression made from its name filters
    (ctk::nameFiltersToRegExp: "(.*\\.pth?$|...)" from "*.pth"-style patterns; ".+" when none has one), and
    only a text it accepts is announced (currentPathChanged); a change of acceptance is (validInputChanged)."""
    values = widget._standin["values"]
    path = values.get("currentPath") or ""
    extensions = [
        match.group(1)
        for name_filter in values.get("nameFilters") or []
        for pattern in (re.search(r"\(([^)]*)\)", name_filter) or re.match(r"(.*)", name_filter)).group(1).split()
        for match in [re.match(r"\*\.(\w+)", pattern)]
        if match
    ]
    expression = "(" + "|".join(rf".*\.{extension}?$" for extension in extensions) + ")" if extensions else ".+"
    valid = re.fullmatch(expression, path) is not None
    if valid:
        emit(widget, "currentPathChanged(QString)", path)
    if valid != values.get("_validInput", False):
        values["_validInput"] = valid
        emit(widget, "validInputChanged(bool)", valid)


def emit(widget: Widget, signal: str, *args) -> None:
    """Fire a signal as Qt would: every connected slot is called, as PythonQt calls a Python callable: with as
    many of the signal's arguments as it takes."""
    if signal not in widget._standin["signals"]:
        raise AttributeError(f"{widget._standin['class']} has no signal {signal}")
    for slot in list(widget._standin["connections"].get(signal, [])):
        slot(*args[: _positional_count(slot, len(args))])


def _positional_count(slot, given: int) -> int:
    try:
        parameters = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):
        return given
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return given
    return min(given, sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters))


def standin_calls(widget: Widget, name: str | None = None) -> list:
    return [
        args if name else (called, args) for called, args in widget._standin["calls"] if name is None or called == name
    ]


def process_events() -> None:
    while _PENDING:
        _PENDING.pop(0)()


# --- qt, ctk and the Slicer widget classes as modules ---


def _python_class(class_name: str, enums: dict | None = None, **static):
    """A class like PythonQt's wrapper: calling it makes a stand-in instance; enum values are attributes."""
    namespace = {
        value: index
        for values in (enums or CLASSES[class_name]["enums"]).values()
        for index, value in enumerate(values)
    }
    namespace.update(static)
    return type(class_name, (), {**namespace, "__new__": lambda cls, *args: _construct(class_name, *args)})


_SETTINGS = {}
DIALOG_ANSWERS = {}  # what the user picks in a file dialog: {"directory": path}


def _construct(class_name, *args):
    widget = Widget(class_name)
    if class_name == "QShortcut":  # QShortcut(QKeySequence, parent)
        widget._standin["values"]["key"], widget._standin["values"]["parent"] = args[0], args[1]
    elif class_name == "QKeySequence":
        widget._standin["values"]["toString"] = args[0]
    elif class_name == "QCompleter":
        widget._standin["values"]["model"] = list(args[0]) if args else []
    elif class_name == "QSettings":  # one store for all QSettings objects, as the application's settings file
        object.__setattr__(widget, "value", lambda key, default=None: _SETTINGS.get(key, default))
        object.__setattr__(widget, "setValue", lambda key, value: _SETTINGS.__setitem__(key, value))
        object.__setattr__(widget, "remove", lambda key: _SETTINGS.pop(key, None))
    return widget


def _qt_module():
    qt = types.ModuleType("qt")
    for name in CLASSES:
        if name.startswith("Q"):
            setattr(qt, name, _python_class(name))
    qt.QTimer = _python_class("QTimer", singleShot=staticmethod(lambda msec, callback: _PENDING.append(callback)))
    qt.QFileDialog = _python_class(
        "QFileDialog",
        getExistingDirectory=staticmethod(lambda parent, caption, directory: DIALOG_ANSWERS.get("directory", "")),
    )
    qt.Qt = types.SimpleNamespace(
        **{value: index for values in API["qt_namespace_enums"].values() for index, value in enumerate(values)}
    )
    return qt


def _ctk_module():
    ctk = types.ModuleType("ctk")
    for name in CLASSES:
        if name.startswith("ctk"):
            setattr(ctk, name, _python_class(name))
    return ctk


# --- .ui files ---


def load_ui(path) -> Widget:
    """slicer.util.loadUI: the .ui file's widgets as stand-ins, its properties checked and set."""
    root = ElementTree.parse(path).getroot().find("widget")
    widget = _ui_widget(root)
    widget._standin["ui_path"] = str(path)
    return widget


def _ui_value(element):
    (value,) = list(element)
    if value.tag == "bool":
        return value.text == "true"
    if value.tag in ("number", "double"):
        return float(value.text) if value.tag == "double" else int(value.text)
    if value.tag == "stringlist":
        return [item.text or "" for item in value]
    return value.text if value.tag in ("string", "enum", "set", "cstring") else None


def _ui_widget(element) -> Widget:
    widget = Widget(element.get("class"), element.get("name"))
    state = widget._standin
    for prop in element.findall("property"):
        name = prop.get("name")
        if name in UI_DYNAMIC_PROPERTIES:
            state["values"].setdefault("dynamic", {})[name] = _ui_value(prop)
        elif name in state["properties"]:
            state["values"][name] = _ui_value(prop)
        else:
            raise AttributeError(f"{path_hint(element)}: {state['class']} has no property '{name}'")
    for layout in element.findall("layout"):
        _ui_layout(layout, widget)
    for child in element.findall("widget"):
        state["children"][child.get("name")] = _ui_widget(child)
    return widget


def _ui_layout(element, parent: Widget) -> None:
    layout = Widget(element.get("class"), element.get("name", ""))
    for prop in element.findall("property"):
        if prop.get("name") not in set(layout._standin["properties"]) | UI_LAYOUT_PROPERTIES:
            raise AttributeError(f"{element.get('class')} has no property '{prop.get('name')}'")
    for item in element.findall("item"):
        for child in item:
            if child.tag == "widget":
                parent._standin["children"][child.get("name")] = _ui_widget(child)
            elif child.tag == "layout":
                _ui_layout(child, parent)
            elif child.tag == "spacer":
                unknown = {p.get("name") for p in child.findall("property")} - UI_SPACER_PROPERTIES
                if unknown:
                    raise AttributeError(f"a spacer has no properties {unknown}")


def path_hint(element) -> str:
    return element.get("name") or element.get("class")


def ui_children(widget: Widget):
    """Every named widget under `widget`."""
    for name, child in widget._standin["children"].items():
        if child._standin["values"].get("objectName") == name:
            yield name, child
            yield from ui_children(child)


def child_widget_variables(widget: Widget):
    """slicer.util.childWidgetVariables: the .ui's named widgets as attributes."""
    return types.SimpleNamespace(**dict(ui_children(widget)))


# --- slicer.ScriptedLoadableModule, slicer.parameterNodeWrapper, slicer.i18n ---


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent
        self.moduleName = self.__class__.__name__
        parent.title = ""
        parent.categories = []
        parent.dependencies = []
        parent.contributors = []
        parent.helpText = ""
        parent.acknowledgementText = ""

    def resourcePath(self, filename):
        return os.path.join(os.path.dirname(inspect.getfile(type(self))), "Resources", filename)


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent
        self.moduleName = self.__class__.__name__.removesuffix("Widget")
        self.developerMode = False
        self.layout = parent.layout()

    def resourcePath(self, filename):
        return os.path.join(os.path.dirname(inspect.getfile(type(self))), "Resources", filename)

    def setup(self):
        pass

    def cleanup(self):
        pass


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        self.moduleName = self.__class__.__name__.removesuffix("Logic")
        self.isSingletonParameterNode = True

    def getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        return node if node is not None else slicer.mrmlScene.AddNode(self.createParameterNode())

    def createParameterNode(self):
        node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, requestedDelay=None, msec=None):
        logging.info(message)


class Choice:
    def __init__(self, choices):
        self.choices = list(choices)


def parameterNodeWrapper(cls):
    """The class's annotated members as typed parameters of a vtkMRMLScriptedModuleNode: nodes as node
    references, other values as strings; Choice refuses values outside its choices."""
    wrapped = {
        "__doc__": cls.__doc__,
        "__annotations__": dict(cls.__annotations__),
        "allParameters": dict(cls.__annotations__),
    }

    def make_property(name, annotation, default):
        kind, choices = annotation, None
        if get_origin(annotation) is Annotated:
            kind, *extras = get_args(annotation)
            choices = next((extra.choices for extra in extras if isinstance(extra, Choice)), None)
        is_node = isinstance(kind, type) and issubclass(kind, slicer.vtkMRMLNode)

        def getter(self):
            if is_node:
                return self.parameterNode.GetNodeReference(name)
            if not self.parameterNode.GetParameterNames() or name not in self.parameterNode.GetParameterNames():
                return default
            text = self.parameterNode.GetParameter(name)
            return text == "True" if kind is bool else kind(text)

        def setter(self, value):
            if is_node:
                if value is not None and not isinstance(value, kind):
                    raise ValueError(f"{name} takes a {kind.__name__}, not {type(value).__name__}")
                self.parameterNode.SetNodeReferenceID(name, value.GetID() if value is not None else None)
                return
            if not isinstance(value, kind) or (choices is not None and value not in choices):
                raise ValueError(f"{name}: {value!r} is not a valid value")
            self.parameterNode.SetParameter(name, str(value))

        return property(getter, setter)

    for name, annotation in cls.__annotations__.items():
        wrapped[name] = make_property(name, annotation, getattr(cls, name, None))

    def __init__(self, parameterNode):
        self.parameterNode = parameterNode
        self._guiTags = {}

    def connectGui(self, gui):
        """Every widget whose SlicerParameterName names a parameter is bound to it."""
        dynamic = {child: child._standin["values"].get("dynamic", {}) for child in vars(gui).values()}
        bound = {names["SlicerParameterName"]: child for child, names in dynamic.items() if names}
        unknown = set(bound) - set(cls.__annotations__)
        if unknown:
            raise ValueError(f"the .ui binds unknown parameters {unknown}")
        tag = len(self._guiTags) + 1
        self._guiTags[tag] = bound
        return tag

    def disconnectGui(self, tag):
        self._guiTags.pop(tag, None)  # as Slicer: an unknown or spent tag is ignored

    wrapped.update(
        __init__=__init__,
        connectGui=connectGui,
        disconnectGui=disconnectGui,
        AddObserver=lambda self, *args: self.parameterNode.AddObserver(*args),
        RemoveObserver=lambda self, tag: self.parameterNode.RemoveObserver(tag),
    )
    return type(cls.__name__, (), wrapped)


def _module(name, **members):
    module = types.ModuleType(name)
    for key, value in members.items():
        setattr(module, key, value)
    return module


def _check_python_names(module_name, names):
    known = set(API["python_modules"][module_name]["names"])
    assert set(names) <= known, f"{module_name} has no {set(names) - known} in Slicer 5.10/5.12"
    return names


# --- the Segment Editor module, as much as the panel reaches ---


class SegmentEditorModuleWidget:
    """qSlicerSegmentEditorModuleWidget's Python side: its editor widget and its singleton parameter node.

    As qMRMLSegmentEditorWidget, the editor shows what its vtkMRMLSegmentEditorNode holds: its segmentation
    and source volume are the node's (whoever set them, the widget or code that edits the node), and the undo
    history (`saveStateForUndo` steps, listed in `undo_history(editor)`) belongs to one segmentation: it is
    cleared whenever the node's segmentation changes."""

    def __init__(self):
        self.editor = Widget("qMRMLSegmentEditorWidget", "SegmentEditor")
        state = self.editor._standin
        state["history"], state["history_of"] = [], None

        def node():
            return state["values"].get("mrmlSegmentEditorNode")

        def follow_node():
            shown = node().GetSegmentationNode() if node() is not None else None
            if shown is not state["history_of"]:
                state["history"], state["history_of"] = [], shown
            return shown

        def recorded(name, function):
            def call(*args):
                state["calls"].append((name, args))
                return function(*args)

            object.__setattr__(self.editor, name, call)

        def on_node(setter):
            def set_on_node(value):
                if node() is None:  # as qMRMLSegmentEditorWidget: an error in the log, nothing set
                    logging.error("qMRMLSegmentEditorWidget: invalid segment editor parameter set node")
                    return
                getattr(node(), setter)(value)

            return set_on_node

        recorded("setSegmentationNode", on_node("SetAndObserveSegmentationNode"))
        recorded("segmentationNode", follow_node)
        recorded("setSourceVolumeNode", on_node("SetAndObserveSourceVolumeNode"))
        recorded("sourceVolumeNode", lambda: node().GetSourceVolumeNode() if node() is not None else None)
        recorded("saveStateForUndo", lambda: (follow_node(), state["history"].append("step")))
        recorded("undo", lambda: follow_node() and state["history"] and state["history"].pop())

    def selectParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode("SegmentEditor", "vtkMRMLSegmentEditorNode")
        if node is None:
            node = add_segment_editor_node(slicer.mrmlScene)
        self.editor.setMRMLSegmentEditorNode(node)


def undo_history(editor: Widget) -> list:
    """The undo steps the Segment Editor holds for the segmentation it shows now."""
    editor.segmentationNode()
    return list(editor._standin["history"])


def add_segment_editor_node(scene):
    """The Segment Editor's parameter node as the application makes it: a singleton, kept by Clear()."""
    node = scene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
    node.UnRegister(None)
    node.SetSingletonTag("SegmentEditor")
    return scene.AddNode(node)


def install():
    """Put the application-only modules where `import qt` and friends find them (once per test process: the
    loaded module keeps them)."""
    sys.modules["qt"], sys.modules["ctk"] = _qt_module(), _ctk_module()
    sys.modules["slicer.ScriptedLoadableModule"] = _module(
        "slicer.ScriptedLoadableModule",
        **{
            name: globals()[name]
            for name in _check_python_names(
                "slicer.ScriptedLoadableModule",
                [
                    "ScriptedLoadableModule",
                    "ScriptedLoadableModuleWidget",
                    "ScriptedLoadableModuleLogic",
                    "ScriptedLoadableModuleTest",
                ],
            )
        },
    )
    sys.modules["slicer.parameterNodeWrapper"] = _module(
        "slicer.parameterNodeWrapper",
        **{
            name: globals()[name]
            for name in _check_python_names("slicer.parameterNodeWrapper", ["parameterNodeWrapper", "Choice"])
        },
    )
    _check_python_names("slicer.i18n", ["tr", "translate"])
    sys.modules["slicer.i18n"] = _module("slicer.i18n", tr=lambda text: text, translate=lambda context, text: text)
    util = {
        "loadUI": load_ui,
        "childWidgetVariables": child_widget_variables,
        "mainWindow": lambda: Widget("QMainWindow", "MainWindow"),
        "errorDisplay": lambda text, **kwargs: logging.error(text),
        "showStatusMessage": lambda message, duration=0: logging.info(message),
    }
    _check_python_names("slicer.util", list(util))
    for name, function in util.items():
        setattr(slicer.util, name, function)
    for name in CLASSES:
        if name.startswith(("qSlicer", "qMRML")):
            setattr(slicer, name, _python_class(name))


def reset():
    """A fresh application: no pending timers, empty settings."""
    _PENDING.clear()
    _SETTINGS.clear()
    DIALOG_ANSWERS.clear()
