"""The panel's Dataset section: annotate a whole dataset (a folder of CTs, a CSV manifest, an MSD/nnU-Net layout
or a `segvol batch` output) case by case, with SegVolSlicerLib.campaign doing the bookkeeping.

A table of the cases (id, status, low-confidence segments, time spent), *Next case* (asks before leaving a case
with changes not accepted, closes the current case's nodes, reads the next CT and its existing result on a side
job, shows them, optionally segments the names typed above when the case has no result), *Accept* (the label
written on a side job), *Flag* with a comment, *Skip*. The annotator's name is asked once and kept in the
settings. Every AI step the panel applies to the open case is recorded with its prompts (`ai_step`), every other
change of its segments counts as a hand edit. Files are read and written on the worker; the scene only here, on
the GUI thread.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from contextlib import contextmanager

import ctk
import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.util import VTKObservationMixin

from ..campaign.campaign import Campaign, InputLabelExists
from ..campaign.locks import HEARTBEAT_S
from ..campaign.order import ORDERS
from ..clinical.confidence import Confidence
from ..clinical.statistics import segment_statistics
from ..errors import SegVolError
from . import campaign_scene

ANNOTATOR_SETTING = "SegVolSlicer/Annotator"
ORDER_TITLES = ("needs attention first", "by id")  # orderComboBox's items, in ORDERS' order
LOAD_JOB, ACCEPT_JOB = "SegVol case", "SegVol accept"
LEAVE_CASE = _(
    "Case {case} has changes that are not accepted. Leave it? (Its work so far is kept: it stays in progress.)"
)
REPLACE_INPUT = _("{error}\n\nReplace it?")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


class CampaignSection(VTKObservationMixin):
    """Built into `layout`; `parameters()` is the panel's parameter node (the case's volume and segmentation go
    there), `weights()` the chosen weights (recorded), `run_names()` runs the names typed in the panel,
    `show_statistics(list)` shows the Results table, `show_status(text)` / `show_error(error, interactive)` the
    status line."""

    def __init__(
        self, layout, jobs, parameters: Callable, weights: Callable, run_names, show_statistics, show_status, show_error
    ):
        VTKObservationMixin.__init__(self)
        self.layout, self.jobs = layout, jobs
        self.parameters, self.weights, self.run_names = parameters, weights, run_names
        self.show_statistics, self.show_status, self.show_error = show_statistics, show_status, show_error
        self.campaign: Campaign | None = None
        self.case = None  # the OpenCase being annotated
        self.loaded = None  # its LoadedCase (the CT as read: accepted labels copy its geometry)
        self.nodes = (None, None)  # (volume, segmentation) shown for the last case
        self.changed = False  # the open case has AI steps or hand edits that are not accepted
        self._applying = False  # SegVol writes the segments: not a hand edit

    def setup(self) -> None:
        section = ctk.ctkCollapsibleButton()
        section.text = _("Dataset")
        section.collapsed = True
        self.layout.addWidget(section)
        form = qt.QFormLayout(section)
        self.sourcePathEdit = ctk.ctkPathLineEdit()
        self.sourcePathEdit.filters = (
            ctk.ctkPathLineEdit.Dirs | ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Readable
        )
        self.sourcePathEdit.nameFilters = ["CSV manifest (*.csv)", "All files (*)"]
        self.sourcePathEdit.toolTip = _(
            "A folder of CTs, a CSV manifest (column image), an MSD/nnU-Net dataset folder (imagesTr, labelsTr, "
            "dataset.json) or a `segvol batch` output folder"
        )
        form.addRow(_("Cases:"), self.sourcePathEdit)
        self.annotatorEdit = qt.QLineEdit()
        self.annotatorEdit.placeholderText = _("your name, written into every record")
        self.annotatorEdit.text = qt.QSettings().value(ANNOTATOR_SETTING) or ""
        self.annotatorEdit.connect("editingFinished()", self._store_annotator)
        form.addRow(_("Annotator:"), self.annotatorEdit)
        self.orderComboBox = qt.QComboBox()
        self.orderComboBox.addItems(list(ORDER_TITLES))
        self.orderComboBox.connect("currentIndexChanged(int)", lambda index: self.show_table())
        form.addRow(_("Order:"), self.orderComboBox)
        self.runNamesCheckBox = qt.QCheckBox(_("Segment the names above when a case has no result"))
        form.addRow(self.runNamesCheckBox)
        self.openCampaignButton = qt.QPushButton(_("Open"))
        self.openCampaignButton.connect("clicked(bool)", self.on_open)
        form.addRow(self.openCampaignButton)
        self.progressLabel = qt.QLabel()
        form.addRow(self.progressLabel)
        self.casesLabel = qt.QLabel()
        self.casesLabel.wordWrap = True
        form.addRow(self.casesLabel)
        self.nextCaseButton = qt.QPushButton(_("Next case"))
        self.nextCaseButton.connect("clicked(bool)", lambda: self.on_next())
        self.acceptButton = qt.QPushButton(_("Accept"))
        self.acceptButton.toolTip = _("Write the case's segments as its label, with how they were made")
        self.acceptButton.connect("clicked(bool)", self.on_accept)
        self.skipButton = qt.QPushButton(_("Skip"))
        self.skipButton.connect("clicked(bool)", self.on_skip)
        buttons = qt.QHBoxLayout()
        for button in (self.nextCaseButton, self.acceptButton, self.skipButton):
            buttons.addWidget(button)
        form.addRow(buttons)
        self.commentEdit = qt.QLineEdit()
        self.commentEdit.placeholderText = _("why this case needs another look")
        self.flagButton = qt.QPushButton(_("Flag"))
        self.flagButton.connect("clicked(bool)", self.on_flag)
        flagging = qt.QHBoxLayout()
        flagging.addWidget(self.commentEdit)
        flagging.addWidget(self.flagButton)
        form.addRow(flagging)
        self.heartbeatTimer = qt.QTimer()
        self.heartbeatTimer.setInterval(int(HEARTBEAT_S * 1000))
        self.heartbeatTimer.connect("timeout()", self._heartbeat)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self._on_scene_close)
        self.update()

    def cleanup(self) -> None:
        """Module unload and application exit: the open case stays in progress, its lock released."""
        self.heartbeatTimer.stop()
        self._leave_case()
        self.removeObservers()

    def update(self) -> None:
        busy = self.jobs.side_job_named(LOAD_JOB) or self.jobs.side_job_named(ACCEPT_JOB)
        opened = self.case is not None and not busy
        self.nextCaseButton.enabled = self.campaign is not None and not busy
        for button in (self.acceptButton, self.skipButton, self.flagButton):
            button.enabled = opened
        self.acceptButton.enabled = opened and not self.case.read_only

    # --- the campaign ---

    def _store_annotator(self) -> None:
        qt.QSettings().setValue(ANNOTATOR_SETTING, self.annotatorEdit.text.strip())

    def on_open(self) -> None:
        annotator = self.annotatorEdit.text.strip()
        if not annotator:
            self.show_status(_("Enter your name as annotator first: it goes into every record and lock."))
            return
        self._store_annotator()
        self._leave_case()
        try:
            self.campaign = Campaign.open(self.sourcePathEdit.currentPath.strip(), annotator)
        except SegVolError as error:
            self.show_error(error, True)
            return
        self.show_table()
        self.show_status(_("Opened {path}: {summary}.").format(path=self.campaign.source.path, summary=self.progress()))
        self.update()

    def progress(self) -> str:
        return self.campaign.progress().summary if self.campaign is not None else ""

    def order(self) -> str:
        return ORDERS[max(self.orderComboBox.currentIndex, 0)]

    def show_table(self) -> None:
        if self.campaign is None:
            return
        states = self.campaign.all_states()
        rows = ["<tr><th align='left'>Case</th><th>Status</th><th>Low confidence</th><th>Time</th></tr>"]
        current = self.case.case.id if self.case is not None else None
        for case in self.campaign.ordered_cases(self.order()):
            state = states[case.id]
            name = html.escape(case.id)
            name = f"<b>{name}</b>" if case.id == current else name
            low = html.escape(", ".join(case.low_segments)) or "-"
            status = html.escape(state.status + (f" ({state.annotator})" if state.annotator else ""))
            rows.append(f"<tr><td>{name}</td><td>{status}</td><td>{low}</td><td>{_minutes(state.seconds)}</td></tr>")
        self.casesLabel.text = "<table>" + "".join(rows) + "</table>"
        self.progressLabel.text = self.progress()

    # --- moving through the cases ---

    def on_next(self, after: str | None = None) -> None:
        if self.campaign is None:
            return
        if (
            self.case is not None
            and self.changed
            and not slicer.util.confirmYesNoDisplay(LEAVE_CASE.format(case=self.case.case.id))
        ):
            return
        self._leave_case()
        try:
            self.case = self.campaign.next_case(self.order(), after=after)
        except SegVolError as error:
            self.show_error(error, True)
            return
        if self.case is None:
            self.show_table()
            self.show_status(_("No case left to annotate: {summary}.").format(summary=self.progress()))
            self.update()
            return
        if self.case.message:
            self.show_status(self.case.message)
        case = self.case
        self.jobs.start_side_job(lambda reporter: self._read(case), LOAD_JOB, self._loaded(case))
        self.update()
        self.jobs.serve()

    @staticmethod
    def _read(case):
        """On the worker: the CT, its existing result and their statistics (files and numpy only)."""
        loaded = case.load()
        statistics = []
        for segment in loaded.segments:
            tags = campaign_scene.segment_tags(segment)
            statistics.append(
                segment_statistics(
                    segment.name,
                    segment.mask,
                    loaded.volume.array,
                    loaded.volume.ijk_to_ras,
                    Confidence.from_tags(tags),
                    "RAS",
                )  # fmt: skip
            )
        return loaded, statistics

    def _loaded(self, case):
        def done(job):
            if case is not self.case:  # left meanwhile (scene closed, another case opened)
                return
            try:
                loaded, statistics = job.outcome()
            except SegVolError as error:
                self.show_error(error, True)
                self._leave_case()
                self.update()
                return
            self.loaded = loaded
            self.nodes = campaign_scene.show_case(slicer.mrmlScene, case.case.id, loaded)
            volume, segmentation = self.nodes
            parameters = self.parameters()
            parameters.inputVolume, parameters.outputSegmentation = volume, segmentation
            self.addObserver(segmentation.GetSegmentation(), slicer.vtkSegmentation.SegmentModified, self._edited)
            self.heartbeatTimer.start()
            self.show_statistics(statistics)
            self.show_table()
            shown = _("Case {case} ({summary}).").format(case=case.case.id, summary=self.progress())
            self.show_status("\n".join(filter(None, [case.message, shown])))
            self.update()
            if not loaded.segments and self.runNamesCheckBox.checked and parameters.targetNames.strip():
                self.run_names()

        return done

    def on_skip(self) -> None:
        case = self.case
        if case is None:
            return
        if not self._end(lambda: case.skip()):
            return
        self.on_next(after=case.case.id)

    def on_flag(self) -> None:
        comment = self.commentEdit.text.strip()
        if self.case is None:
            return
        if not comment:
            self.show_status(_("Write why the case needs another look in the comment box, then Flag."))
            return
        case = self.case
        if self._end(lambda: case.flag(comment)):
            self.commentEdit.text = ""
            self.on_next(after=case.case.id)

    def _end(self, action) -> bool:
        try:
            action()
        except SegVolError as error:  # the lock was lost: nothing was written
            self.show_error(error, True)
            return False
        finally:
            self.changed = False
        self._drop_case()
        return True

    def on_accept(self, replace_input: bool = False) -> None:
        case = self.case
        if case is None or self.loaded is None:
            return
        volume, segmentation = self.nodes
        segments = campaign_scene.read_segments(segmentation, volume)
        if not segments:
            self.show_status(_("The case has no segment to accept."))
            return
        loaded, weights = self.loaded, self.weights()
        self.show_status(_("Writing the label of {case}...").format(case=case.case.id))
        self.jobs.start_side_job(
            lambda reporter: case.accept(segments, loaded.volume, weights, replace_input=replace_input),
            ACCEPT_JOB,
            self._accepted(case),
        )
        self.update()
        self.jobs.serve()

    def _accepted(self, case):
        def done(job):
            self.update()
            try:
                path = job.outcome()
            except InputLabelExists as error:
                if case is self.case and slicer.util.confirmYesNoDisplay(REPLACE_INPUT.format(error=error)):
                    self.on_accept(replace_input=True)
                return
            except SegVolError as error:
                self.show_error(error, True)
                return
            if case is self.case:
                self.changed = False
                self._drop_case()
            self.show_table()
            self.show_status(_("Accepted {case}: {path} ({summary}).").format(
                case=case.case.id, path=path, summary=self.progress()
            ))  # fmt: skip
            self.update()

        return done

    # --- what happens to the open case ---

    @contextmanager
    def ai_step(self, request, results):
        """Around writing a run's results: SegVol's writes are no hand edits, and once written the run is a step
        of the open case's record (runs on other volumes are not the case's)."""
        self._applying = True
        try:
            yield
        finally:
            self._applying = False
        volume, _segmentation = self.nodes
        if self.case is None or request.volumeNode is not volume:
            return
        sources = campaign_scene.prompt_sources(self.parameters(), [t for t, _ in request.targets])
        for mode, targets, confidences in campaign_scene.run_steps(request, results):
            self.case.record_step(mode, targets, request.zoomIn, sources, confidences)
        self.changed = True

    @vtk.calldata_type(vtk.VTK_STRING)
    def _edited(self, caller, event, segment_id):
        if self._applying or self.case is None:
            return
        segment = caller.GetSegment(segment_id)
        self.case.note_hand_edit(segment.GetName() if segment is not None else segment_id)
        self.changed = True

    def _heartbeat(self) -> None:
        if self.case is None:
            return
        try:
            self.case.heartbeat()
        except SegVolError as error:
            self.show_error(error, True)
            self.case = None
            self.update()

    def _drop_case(self) -> None:
        """The case was accepted, flagged or skipped: its nodes stay shown until the next case."""
        self.heartbeatTimer.stop()
        self.case = None
        self.update()

    def _leave_case(self) -> None:
        """Close the open case (kept in progress) and remove the last case's nodes."""
        self.heartbeatTimer.stop()
        if self.case is not None and not self.case.closed:
            try:
                self.case.close()
            except SegVolError as error:  # taken over meanwhile: its new holder keeps it
                self.show_status(str(error))
        self.case, self.loaded, self.changed = None, None, False
        volume, segmentation = self.nodes
        if segmentation is not None:
            self.removeObserver(segmentation.GetSegmentation(), slicer.vtkSegmentation.SegmentModified, self._edited)
        campaign_scene.remove_nodes(segmentation, volume)
        self.nodes = (None, None)

    def _on_scene_close(self, caller, event) -> None:
        self._leave_case()
        self.update()
