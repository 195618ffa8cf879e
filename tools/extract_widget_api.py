"""Write SegVolSlicer/Testing/Data/slicer-widget-api.json: the members of the Qt, CTK and Slicer classes that the
module and its .ui file use, as 3D Slicer 5.10.0 and 5.12.3 both have them. The tests' widget stand-ins
(Testing/Python/slicer_app_standins.py) refuse every member not listed there.

    python tools/extract_widget_api.py SLICER_GIT CTK_GIT

SLICER_GIT / CTK_GIT: clones (bare is fine) of github.com/Slicer/Slicer and github.com/commontk/CTK. Slicer and
CTK classes come from their headers at the tags (CTK at the commit each Slicer tag builds, read from
SuperBuild/External_CTK.cmake): Q_PROPERTYs, signals, public slots and methods, enums; a member counts when
both releases have it. Slicer's Python API (slicer.ScriptedLoadableModule, slicer.i18n,
slicer.parameterNodeWrapper, slicer.util) comes from Base/Python at the tags. Qt's own classes are not in
these sources: QT_CLASSES below lists their members from the Qt 5.15 reference (doc.qt.io/qt-5), the Qt
Slicer 5.10 and 5.12 ship, as PythonQt exposes them (properties as attributes, slots and methods as calls).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

SLICER_TAGS = ("v5.10.0", "v5.12.3")
OUTPUT = Path(__file__).resolve().parents[1] / "SegVolSlicer" / "Testing" / "Data" / "slicer-widget-api.json"

SLICER_HEADERS = {
    "qSlicerMarkupsPlaceWidget": "Modules/Loadable/Markups/Widgets/qSlicerMarkupsPlaceWidget.h",
    "qSlicerWidget": "Base/QTGUI/qSlicerWidget.h",
    "qSlicerObject": "Base/QTCore/qSlicerObject.h",
    "qSlicerAbstractModuleWidget": "Base/QTGUI/qSlicerAbstractModuleWidget.h",
    "qSlicerAbstractModuleRepresentation": "Base/QTCore/qSlicerAbstractModuleRepresentation.h",
    "qSlicerScriptedLoadableModuleWidget": "Base/QTGUI/qSlicerScriptedLoadableModuleWidget.h",
    "qMRMLWidget": "Libs/MRML/Widgets/qMRMLWidget.h",
    "qMRMLNodeComboBox": "Libs/MRML/Widgets/qMRMLNodeComboBox.h",
    "qMRMLSegmentSelectorWidget": "Libs/MRML/Widgets/qMRMLSegmentSelectorWidget.h",
    "qMRMLSegmentEditorWidget": "Modules/Loadable/Segmentations/Widgets/qMRMLSegmentEditorWidget.h",
}
CTK_HEADERS = {
    "ctkPathLineEdit": "Libs/Widgets/ctkPathLineEdit.h",
    "ctkCollapsibleButton": "Libs/Widgets/ctkCollapsibleButton.h",
}
SLICER_PYTHON = {
    "slicer.ScriptedLoadableModule": "Base/Python/slicer/ScriptedLoadableModule.py",
    "slicer.i18n": "Base/Python/slicer/i18n.py",
    "slicer.parameterNodeWrapper": "Base/Python/slicer/parameterNodeWrapper/__init__.py",
    "slicer.util": "Base/Python/slicer/util.py",
}


def _qt(base, properties=(), signals=(), methods=(), enums=None):
    return {
        "bases": [base] if base else [],
        "properties": dict(properties),
        "signals": list(signals),
        # Qt's own classes are wrapped whole by PythonQt: every public method, argument counts not checked
        "methods": {name: {"returns": returned, "args": None} for name, returned in dict(methods).items()},
        "enums": enums or {},
    }


# Qt 5.15 members (doc.qt.io/qt-5/<class>.html). properties: name -> type; methods: name -> returned class
# (when a stand-in must return a widget) or null.
_WIDGET_METHODS = {
    m: None
    for m in (
        "show",
        "hide",
        "setVisible",
        "setEnabled",
        "setDisabled",
        "setFocus",
        "setToolTip",
        "update",
        "repaint",
        "raise_",
        "lower",
        "close",
        "setLayout",
        "setParent",
        "setObjectName",
        "objectName",
        "parent",
        "parentWidget",
        "isVisible",
        "isEnabled",
        "findChild",
        "findChildren",
        "children",
        "deleteLater",
        "setStyleSheet",
        "setSizePolicy",
        "setMinimumSize",
        "setMaximumSize",
        "setFixedSize",
        "adjustSize",
        "setProperty",
        "property",
        "blockSignals",
        "signalsBlocked",
        "installEventFilter",
        "window",
        "setWindowTitle",
        "setMinimumWidth",
        "setMaximumWidth",
        "setMinimumHeight",
        "setMaximumHeight",
        "setContextMenuPolicy",
        "disconnect",
        "connect",
    )
}
_WIDGET_METHODS["layout"] = "QLayout"
QT_CLASSES = {
    "QObject": _qt(
        None,
        {"objectName": "QString"},
        ["destroyed()", "destroyed(QObject*)", "objectNameChanged(QString)"],
        {
            m: None
            for m in (
                "objectName",
                "setObjectName",
                "parent",
                "setParent",
                "deleteLater",
                "blockSignals",
                "signalsBlocked",
                "children",
                "findChild",
                "findChildren",
                "property",
                "setProperty",
                "connect",
                "disconnect",
                "installEventFilter",
            )
        },
    ),
    "QWidget": _qt(
        "QObject",
        {
            "enabled": "bool",
            "visible": "bool",
            "toolTip": "QString",
            "geometry": "QRect",
            "sizeHint": "QSize",
            "minimumSize": "QSize",
            "maximumSize": "QSize",
            "sizePolicy": "QSizePolicy",
            "styleSheet": "QString",
            "windowTitle": "QString",
            "statusTip": "QString",
            "whatsThis": "QString",
            "focusPolicy": "Qt::FocusPolicy",
            "minimumWidth": "int",
            "minimumHeight": "int",
            "maximumWidth": "int",
            "maximumHeight": "int",
            "font": "QFont",
            "palette": "QPalette",
            "contextMenuPolicy": "Qt::ContextMenuPolicy",
            "accessibleName": "QString",
        },
        ["customContextMenuRequested(QPoint)", "windowTitleChanged(QString)"],
        _WIDGET_METHODS,
    ),
    "QAbstractButton": _qt(
        "QWidget",
        {
            "text": "QString",
            "icon": "QIcon",
            "checkable": "bool",
            "checked": "bool",
            "autoRepeat": "bool",
            "shortcut": "QKeySequence",
            "down": "bool",
            "iconSize": "QSize",
            "autoExclusive": "bool",
        },
        ["clicked()", "clicked(bool)", "pressed()", "released()", "toggled(bool)"],
        {
            m: None
            for m in (
                "click",
                "toggle",
                "animateClick",
                "setText",
                "text",
                "setChecked",
                "isChecked",
                "setCheckable",
                "isCheckable",
                "setIcon",
            )
        },
    ),
    "QPushButton": _qt(
        "QAbstractButton",
        {"default": "bool", "flat": "bool", "autoDefault": "bool"},
        [],
        {"setDefault": None, "setFlat": None, "setMenu": None, "showMenu": None},
    ),
    "QToolButton": _qt(
        "QAbstractButton",
        {"autoRaise": "bool", "popupMode": "ToolButtonPopupMode", "toolButtonStyle": "Qt::ToolButtonStyle"},
        ["triggered(QAction*)"],
        {"setDefaultAction": None, "setMenu": None, "showMenu": None},
    ),
    "QCheckBox": _qt(
        "QAbstractButton",
        {"tristate": "bool"},
        ["stateChanged(int)"],
        {"checkState": None, "setCheckState": None, "setTristate": None},
    ),
    "QLabel": _qt(
        "QWidget",
        {
            "text": "QString",
            "wordWrap": "bool",
            "alignment": "Qt::Alignment",
            "textFormat": "Qt::TextFormat",
            "openExternalLinks": "bool",
            "margin": "int",
            "indent": "int",
            "textInteractionFlags": "Qt::TextInteractionFlags",
        },
        ["linkActivated(QString)", "linkHovered(QString)"],
        {
            m: None
            for m in ("setText", "text", "clear", "setNum", "setPixmap", "setWordWrap", "setAlignment", "setBuddy")
        },
    ),
    "QLineEdit": _qt(
        "QWidget",
        {
            "text": "QString",
            "placeholderText": "QString",
            "readOnly": "bool",
            "maxLength": "int",
            "clearButtonEnabled": "bool",
            "echoMode": "EchoMode",
            "inputMask": "QString",
            "frame": "bool",
            "cursorPosition": "int",
            "alignment": "Qt::Alignment",
        },
        [
            "textChanged(QString)",
            "textEdited(QString)",
            "returnPressed()",
            "editingFinished()",
            "cursorPositionChanged(int,int)",
            "selectionChanged()",
        ],
        {
            m: None
            for m in (
                "setText",
                "text",
                "clear",
                "selectAll",
                "undo",
                "redo",
                "setCompleter",
                "completer",
                "setPlaceholderText",
                "setReadOnly",
                "insert",
                "setValidator",
            )
        },
    ),
    "QProgressBar": _qt(
        "QWidget",
        {
            "minimum": "int",
            "maximum": "int",
            "value": "int",
            "format": "QString",
            "textVisible": "bool",
            "orientation": "Qt::Orientation",
            "invertedAppearance": "bool",
            "alignment": "Qt::Alignment",
        },
        ["valueChanged(int)"],
        {
            m: None
            for m in (
                "setRange",
                "setValue",
                "value",
                "reset",
                "setMinimum",
                "setMaximum",
                "setFormat",
                "resetFormat",
                "setTextVisible",
                "text",
            )
        },
    ),
    "QComboBox": _qt(
        "QWidget",
        {
            "currentIndex": "int",
            "currentText": "QString",
            "count": "int",
            "editable": "bool",
            "maxVisibleItems": "int",
            "placeholderText": "QString",
        },
        [
            "currentIndexChanged(int)",
            "currentTextChanged(QString)",
            "activated(int)",
            "highlighted(int)",
            "editTextChanged(QString)",
        ],
        {
            m: None
            for m in (
                "addItem",
                "addItems",
                "clear",
                "insertItem",
                "removeItem",
                "findText",
                "findData",
                "itemText",
                "itemData",
                "setCurrentIndex",
                "setCurrentText",
                "currentData",
                "setItemText",
            )
        },
    ),
    "QAbstractItemView": _qt(
        "QWidget",
        {},
        ["clicked(QModelIndex)", "activated(QModelIndex)"],
        {
            m: None
            for m in ("setModel", "model", "currentIndex", "setCurrentIndex", "scrollTo", "selectionModel", "reset")
        },
    ),
    "QMainWindow": _qt(
        "QWidget", {}, [], {m: None for m in ("statusBar", "menuBar", "centralWidget", "addDockWidget", "addToolBar")}
    ),
    # slicer.app (a qSlicerApplication) as the panel uses it: Qt's application signals
    "QCoreApplication": _qt(
        "QObject",
        {"applicationName": "QString", "applicationVersion": "QString"},
        ["aboutToQuit()"],
        {m: None for m in ("processEvents", "exit", "quit", "applicationDirPath")},
    ),
    "QGuiApplication": _qt(
        "QCoreApplication", {"quitOnLastWindowClosed": "bool"}, ["lastWindowClosed()"], {"topLevelWindows": None}
    ),
    "QApplication": _qt(
        "QGuiApplication",
        {},
        ["focusChanged(QWidget*,QWidget*)"],
        {m: None for m in ("closeAllWindows", "topLevelWidgets")},
    ),
    "QLayout": _qt(
        "QObject",
        {"spacing": "int", "contentsMargins": "QMargins", "sizeConstraint": "SizeConstraint"},
        [],
        {
            m: None
            for m in (
                "addWidget",
                "removeWidget",
                "setSpacing",
                "setContentsMargins",
                "count",
                "itemAt",
                "takeAt",
                "update",
                "activate",
                "setMargin",
            )
        },
    ),
    "QBoxLayout": _qt(
        "QLayout",
        {},
        [],
        {m: None for m in ("addLayout", "addStretch", "addSpacing", "insertWidget", "setDirection", "setStretch")},
    ),
    "QVBoxLayout": _qt("QBoxLayout"),
    "QHBoxLayout": _qt("QBoxLayout"),
    "QFormLayout": _qt(
        "QLayout",
        {
            "fieldGrowthPolicy": "FieldGrowthPolicy",
            "labelAlignment": "Qt::Alignment",
            "formAlignment": "Qt::Alignment",
            "horizontalSpacing": "int",
            "verticalSpacing": "int",
            "rowWrapPolicy": "RowWrapPolicy",
        },
        [],
        {m: None for m in ("addRow", "insertRow", "removeRow", "rowCount", "setWidget", "labelForField")},
    ),
    "QTimer": _qt(
        "QObject",
        {
            "interval": "int",
            "singleShot": "bool",
            "active": "bool",
            "remainingTime": "int",
            "timerType": "Qt::TimerType",
        },
        ["timeout()"],
        {
            m: None
            for m in (
                "start",
                "stop",
                "setInterval",
                "interval",
                "setSingleShot",
                "isSingleShot",
                "isActive",
                "singleShot",
                "remainingTime",
                "timerId",
            )
        },
    ),
    "QSettings": _qt(
        "QObject",
        {},
        [],
        {
            m: None
            for m in (
                "value",
                "setValue",
                "contains",
                "remove",
                "sync",
                "allKeys",
                "childKeys",
                "beginGroup",
                "endGroup",
                "clear",
                "fileName",
            )
        },
    ),
    "QCompleter": _qt(
        "QObject",
        {
            "caseSensitivity": "Qt::CaseSensitivity",
            "filterMode": "Qt::MatchFlags",
            "completionPrefix": "QString",
            "completionMode": "CompletionMode",
            "maxVisibleItems": "int",
            "wrapAround": "bool",
            "modelSorting": "ModelSorting",
            "completionColumn": "int",
            "completionRole": "int",
        },
        ["activated(QString)", "activated(QModelIndex)", "highlighted(QString)", "highlighted(QModelIndex)"],
        {
            **{
                m: None
                for m in (
                    "setWidget",
                    "widget",
                    "complete",
                    "setCompletionPrefix",
                    "completionPrefix",
                    "setCaseSensitivity",
                    "setFilterMode",
                    "setModel",
                    "model",
                    "currentCompletion",
                    "setCompletionMode",
                    "setMaxVisibleItems",
                    "completionCount",
                    "setPopup",
                )
            },
            "popup": "QAbstractItemView",
        },
    ),
    "QFileDialog": _qt(
        "QWidget",
        {"fileMode": "FileMode", "options": "Options"},
        ["fileSelected(QString)", "directoryEntered(QString)"],
        {m: None for m in ("getExistingDirectory", "getOpenFileName", "setFileMode", "selectedFiles", "exec_")},
    ),
    "QShortcut": _qt(
        "QObject",
        {
            "key": "QKeySequence",
            "enabled": "bool",
            "autoRepeat": "bool",
            "context": "Qt::ShortcutContext",
            "whatsThis": "QString",
        },
        ["activated()", "activatedAmbiguously()"],
        {
            m: None
            for m in ("setKey", "key", "setEnabled", "isEnabled", "setContext", "id", "parentWidget", "setAutoRepeat")
        },
    ),
    "QKeySequence": _qt(None, {}, [], {"toString": None, "isEmpty": None, "count": None, "matches": None}),
}
QT_NAMESPACE_ENUMS = {  # qt.Qt.<value>
    "CaseSensitivity": ["CaseInsensitive", "CaseSensitive"],
    "MatchFlag": [
        "MatchExactly",
        "MatchContains",
        "MatchStartsWith",
        "MatchEndsWith",
        "MatchRegExp",
        "MatchWildcard",
        "MatchFixedString",
        "MatchCaseSensitive",
        "MatchWrap",
        "MatchRecursive",
    ],
    "Orientation": ["Horizontal", "Vertical"],
    "AlignmentFlag": [
        "AlignLeft",
        "AlignRight",
        "AlignHCenter",
        "AlignJustify",
        "AlignTop",
        "AlignBottom",
        "AlignVCenter",
        "AlignCenter",
    ],
}


def git_show(repo: str, revision: str, path: str) -> str:
    return subprocess.run(
        ["git", "-C", repo, "show", f"{revision}:{path}"], capture_output=True, text=True, check=True
    ).stdout


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def _normalise_type(text: str) -> str:
    """Qt's normalised signature type: `const QString& name` -> `QString`."""
    text = re.sub(r"=.*$", "", text).strip()
    text = re.sub(r"^const\s+", "", text)
    text = re.sub(r"\s*&$", "", re.sub(r"\s+\w+$", "", text) if re.search(r"[\w>*&]\s+\w+$", text) else text)
    return text.replace(" ", "")


def parse_header(text: str, class_name: str) -> dict:
    """Bases, properties, signals, public slots/methods and enums of one QObject class in a header."""
    text = _strip_comments(text)
    start = re.search(rf"class\s+(?:\w+_EXPORT\s+)?{class_name}\s*(:[^{{]*)?\{{", text)
    bases = re.findall(r"public\s+(?:virtual\s+)?(\w+)", start.group(1) or "")
    depth, index = 1, start.end()
    while depth:
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        index += 1
    body = text[start.end() : index - 1]
    properties = dict(re.findall(r"Q_PROPERTY\(\s*([\w:<>]+\s*\*?)\s+(\w+)", body))
    properties = {name: kind.strip() for kind, name in re.findall(r"Q_PROPERTY\(\s*([\w:<>]+\s*\*?)\s+(\w+)", body)}
    enums = {
        name: [v.split("=")[0].strip() for v in values.split(",") if v.strip()]
        for name, values in re.findall(r"enum\s+(\w+)\s*\{([^}]*)\}", body)
    }
    flat = re.sub(r"\{[^{}]*\}", ";", body)  # inline bodies
    signals, methods, access, slots = [], {}, "private", False
    for statement in re.split(r";|(?=\b(?:public|protected|private|signals|Q_SIGNALS)\b[^:;]*:)", flat):
        label = re.match(r"\s*(public|protected|private|signals|Q_SIGNALS)\b\s*(slots|Q_SLOTS)?\s*:", statement)
        if label:
            access = "signals" if label.group(1) in ("signals", "Q_SIGNALS") else label.group(1)
            slots = bool(label.group(2))
            statement = statement[label.end() :]
        if access not in ("public", "signals"):
            continue
        invokable = "Q_INVOKABLE" in statement
        declaration = re.search(
            r"(?:^|\s)([\w:<>]+\s*[*&]?)\s*\b(\w+)\s*\(([^()]*)\)\s*(?:const)?\s*"
            r"(?:override|=\s*0)?\s*$",
            " ".join(statement.replace("Q_INVOKABLE", "").split()),
        )
        if not declaration or declaration.group(2) in (class_name, "Q_DECLARE_PRIVATE", "Q_DISABLE_COPY"):
            continue
        returned, name, arguments = declaration.groups()
        if access == "signals":
            types = [_normalise_type(a) for a in arguments.split(",") if a.strip()]
            signals.append(f"{name}({','.join(types)})")
        elif not name.startswith("~") and returned not in ("Q_OBJECT", "QVTK_OBJECT") and (slots or invokable):
            # PythonQt calls only public slots and Q_INVOKABLE methods of these classes (plus decorators)
            given = [a for a in arguments.split(",") if a.strip() and a.strip() != "void"]
            count = [len([a for a in given if "=" not in a]), len(given)]
            if name in methods:  # an overload: any of them may be called
                count = [min(count[0], methods[name]["args"][0]), max(count[1], methods[name]["args"][1])]
            methods[name] = {"returns": returned.replace(" ", "").rstrip("*&"), "args": count}
    return {
        "bases": bases,
        "properties": properties,
        "signals": sorted(set(signals)),
        "methods": methods,
        "enums": enums,
    }


def ctk_revision(slicer_git: str, tag: str) -> str:
    text = git_show(slicer_git, tag, "SuperBuild/External_CTK.cmake")
    return re.search(r'Slicer_\$\{proj\}_GIT_TAG\s*"([0-9a-f]{40})"', text).group(1)


def python_names(text: str, read_sibling=None) -> dict:
    """Top-level names of a Python module, and the methods of its classes; `from .x import *` brings x's
    public names (read with read_sibling("x.py"))."""
    tree = ast.parse(text)
    names, classes = set(), {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and [a.name for a in node.names] == ["*"]:
            sibling = python_names(read_sibling(f"{node.module}.py"))
            names.update(n for n in sibling["names"] if not n.startswith("_"))
            classes.update(sibling["classes"])
            continue
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            classes[node.name] = sorted(n.name for n in node.body if isinstance(n, ast.FunctionDef))
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.ImportFrom):
            names.update(alias.asname or alias.name for alias in node.names)
    return {"names": sorted(names), "classes": classes}


def _common(first, second):
    """What both releases have: dicts and lists intersected recursively; a method's argument counts, the range
    either release accepts."""
    if isinstance(first, dict) and "args" in first:
        if first["args"] is None or second["args"] is None:
            return first
        low, high = zip(first["args"], second["args"])
        return {**first, "args": [max(low), min(high)]}
    if isinstance(first, dict):
        return {key: _common(first[key], second[key]) for key in first if key in second}
    if isinstance(first, list):
        return [item for item in first if item in second]
    return first


def main(slicer_git: str, ctk_git: str) -> None:
    per_release = []
    for tag in SLICER_TAGS:
        ctk = ctk_revision(slicer_git, tag)
        classes = {name: parse_header(git_show(slicer_git, tag, path), name) for name, path in SLICER_HEADERS.items()}
        classes.update({name: parse_header(git_show(ctk_git, ctk, path), name) for name, path in CTK_HEADERS.items()})
        python = {}
        for module, path in SLICER_PYTHON.items():
            folder = Path(path).parent
            python[module] = python_names(
                git_show(slicer_git, tag, path),
                lambda name, tag=tag, folder=folder: git_show(slicer_git, tag, str(folder / name)),
            )
        per_release.append(({"slicer": tag, "ctk": ctk}, classes, python))
    (_, classes, python), (_, newer_classes, newer_python) = per_release
    data = {
        "made_by": "tools/extract_widget_api.py",
        "releases": [release for release, _, _ in per_release],
        "classes": {**QT_CLASSES, **_common(classes, newer_classes)},
        "qt_namespace_enums": QT_NAMESPACE_ENUMS,
        "python_modules": _common(python, newer_python),
    }
    OUTPUT.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
