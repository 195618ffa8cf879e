"""The panel's prompt tools: anatomy-name completion, the place widgets and their shortcuts (P, N, Shift+P,
Shift+N, Shift+B; plain "b" steps slices in Slicer), re-placing the box, and auto-update: a run once a prompt
is complete (a click placed or moved, a box drawn, a stroke finished), after a burst of edits.
"""

from __future__ import annotations

from collections.abc import Callable

import qt
import slicer
from slicer.util import VTKObservationMixin

from .. import vocabulary
from . import bridge

AUTO_UPDATE_DELAY_MS = 400  # one run after a burst of prompt edits
PROMPT_EVENTS = (slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent, slicer.vtkMRMLMarkupsNode.PointRemovedEvent)


class PromptTools(VTKObservationMixin):
    """`parameters()` is the panel's parameter node (or None), `entered()` whether the panel is shown;
    `setup(auto_run)`: `auto_run()` starts an auto-update run."""

    def __init__(self, ui, parameters: Callable, entered: Callable):
        VTKObservationMixin.__init__(self)
        self.ui = ui
        self.parameters = parameters
        self.entered = entered
        self.shortcuts = []
        self.ignore_prompt_events = False  # SegVol's own prompt edits (clearing the old box) are not a prompt
        self._observed = []

    def setup(self, auto_run: Callable) -> None:
        for place_widget, multiple in (
            (self.ui.positivePlaceWidget, True),
            (self.ui.negativePlaceWidget, True),
            (self.ui.boxPlaceWidget, False),
            (self.ui.positiveStrokePlaceWidget, True),  # a curve's points, one after the other
            (self.ui.negativeStrokePlaceWidget, True),
        ):
            place_widget.buttonsVisible = False
            place_widget.placeButton().show()
            place_widget.placeMultipleMarkups = (
                slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
                if multiple
                else slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup
            )
        self.ui.boxPlaceWidget.connect("activeMarkupsPlaceModeChanged(bool)", self.on_box_place_mode_changed)
        self.ui.targetNamesEdit.connect("returnPressed()", self.on_prompt_changed)
        self._set_up_name_completion()
        self.auto_timer = qt.QTimer()
        self.auto_timer.setSingleShot(True)
        self.auto_timer.setInterval(AUTO_UPDATE_DELAY_MS)
        self.auto_timer.connect("timeout()", auto_run)

    def cleanup(self) -> None:
        self.auto_timer.stop()
        self.remove_shortcuts()
        self.removeObservers()
        self._observed = []

    def place_widgets(self):
        return (
            self.ui.positivePlaceWidget,
            self.ui.negativePlaceWidget,
            self.ui.boxPlaceWidget,
            self.ui.positiveStrokePlaceWidget,
            self.ui.negativeStrokePlaceWidget,
        )

    def stop_placing(self) -> None:
        self.auto_timer.stop()
        for place_widget in self.place_widgets():
            place_widget.setPlaceModeEnabled(False)

    # --- name completion ---

    def _set_up_name_completion(self) -> None:
        """Complete the name being typed (the text after the last comma) from SegVol's training names."""
        self.completer = qt.QCompleter(list(vocabulary.category_names()))
        self.completer.setCaseSensitivity(qt.Qt.CaseInsensitive)
        self.completer.setFilterMode(qt.Qt.MatchContains)
        self.completer.setWidget(self.ui.targetNamesEdit)
        self.completer.connect("activated(QString)", self._insert_completion)
        self.ui.targetNamesEdit.connect("textEdited(QString)", self._complete_last_name)

    def _complete_last_name(self, text) -> None:
        prefix = text.split(",")[-1].strip()
        if len(prefix) < 2:
            self.completer.popup().hide()
            return
        self.completer.setCompletionPrefix(prefix)
        self.completer.complete()

    def _insert_completion(self, name) -> None:
        typed = [n.strip() for n in self.ui.targetNamesEdit.text.split(",")[:-1] if n.strip()]
        self.ui.targetNamesEdit.text = ", ".join(typed + [name])

    # --- shortcuts and placing ---

    def install_shortcuts(self) -> None:
        self.remove_shortcuts()
        for key, place_widget in (
            ("P", self.ui.positivePlaceWidget),
            ("N", self.ui.negativePlaceWidget),
            ("Shift+P", self.ui.positiveStrokePlaceWidget),
            ("Shift+N", self.ui.negativeStrokePlaceWidget),
            ("Shift+B", self.ui.boxPlaceWidget),
        ):
            shortcut = qt.QShortcut(qt.QKeySequence(key), slicer.util.mainWindow())
            shortcut.connect("activated()", lambda w=place_widget: self.toggle_place_mode(w))
            self.shortcuts.append(shortcut)

    def remove_shortcuts(self) -> None:
        for shortcut in self.shortcuts:
            shortcut.setParent(None)
        self.shortcuts = []

    def toggle_place_mode(self, place_widget) -> None:
        placing = not place_widget.placeModeEnabled
        if placing and place_widget is self.ui.boxPlaceWidget:
            self.on_box_place_mode_changed(True)
        place_widget.setPlaceModeEnabled(placing)

    def on_box_place_mode_changed(self, placing) -> None:
        """Placing a box while one is placed draws it anew in the same node. Placing into a full ROI node would
        make Slicer create a new ROI node, without SegVol's role tag: the user's new box would do nothing.
        Removing the old box is not a prompt change (a run without any box would start before the new one is
        drawn); the new box is, once placing ends."""
        parameters = self.parameters()
        box = parameters.boxROI if parameters else None
        if box is None:
            return
        if placing and box.GetNumberOfControlPoints() > 0:
            self.without_prompt_events(box.RemoveAllControlPoints)
        elif not placing and box.GetNumberOfDefinedControlPoints() > 0:
            self.on_prompt_changed()

    def without_prompt_events(self, edit: Callable) -> None:
        self.ignore_prompt_events = True
        try:
            edit()
        finally:
            self.ignore_prompt_events = False

    def clear(self, nodes) -> None:
        """Clear the prompts: starting over is not a prompt to run."""
        self.without_prompt_events(lambda: bridge.clear_prompts(nodes))
        self.auto_timer.stop()

    # --- prompt events and auto-update ---

    def observe(self, nodes) -> None:
        nodes = [n for n in nodes if n is not None]
        if nodes == self._observed:
            return
        for old in self._observed:
            self.removeObserver(old, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self._on_point_defined)
            for event in PROMPT_EVENTS:
                self.removeObserver(old, event, self.on_prompt_changed)
        for new in nodes:
            self.addObserver(new, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self._on_point_defined)
            for event in PROMPT_EVENTS:
                self.addObserver(new, event, self.on_prompt_changed)
        self._observed = nodes

    def _on_point_defined(self, caller, event) -> None:
        bridge.tag_point_descriptions(caller)
        self.on_prompt_changed(caller, event)

    def on_prompt_changed(self, caller=None, event=None) -> None:
        # Only while the panel is shown: prompts dragged in another module must not rewrite segments unseen.
        parameters = self.parameters()
        if self.ignore_prompt_events or not (self.entered() and parameters):
            return
        if caller is not None and caller is parameters.boxROI and self.ui.boxPlaceWidget.placeModeEnabled:
            return  # a box being drawn is not a prompt yet: the end of placing (above) is
        if parameters.autoUpdate:
            self.auto_timer.start()
