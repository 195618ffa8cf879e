"""The panel's Results section: the statistics table of the last run's segments (volume, HU, SegVol's
confidence) and *Export DICOM SEG* of the output segmentation.

The export reads the scene on the GUI thread, installs the DICOM SEG packages on first use and encodes on a
side job; every outcome, an unexpected error included, ends in the status line (never a status stuck on
"Writing...").
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable

import ctk
import qt
from slicer.i18n import tr as _

from ..errors import SegVolError
from . import clinical_results

EXPORT_JOB = "SegVol export"


class ResultsSection:
    """Built into `layout`; `parameters()` is the panel's parameter node, `weights()` the chosen weights (their
    identity goes into the DICOM SEG), `show_status(text)` / `show_error(error, interactive)` the status line."""

    def __init__(
        self, layout, logic, jobs, installer, parameters: Callable, weights: Callable, show_status, show_error
    ):
        self.layout = layout
        self.logic = logic
        self.jobs = jobs
        self.installer = installer
        self.parameters = parameters
        self.weights = weights
        self.show_status = show_status
        self.show_error = show_error

    def setup(self, dicom_requirements_file) -> None:
        self.dicom_requirements_file = dicom_requirements_file
        section = ctk.ctkCollapsibleButton()
        section.text = _("Results")
        self.layout.addWidget(section)
        form = qt.QFormLayout(section)
        self.statisticsLabel = qt.QLabel()
        self.statisticsLabel.wordWrap = True
        self.statisticsLabel.toolTip = _(
            "Volume, mean CT intensity and SegVol's confidence of the segments of the last run: the mean "
            "probability inside the segment and the share of voxels near the 0.5 threshold (not a calibrated "
            "probability of being right; low values in red are worth a look)."
        )
        form.addRow(self.statisticsLabel)
        self.dicomSegPathEdit = ctk.ctkPathLineEdit()
        self.dicomSegPathEdit.filters = ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Writable
        self.dicomSegPathEdit.nameFilters = ["DICOM SEG (*.dcm)"]
        self.dicomSegPathEdit.toolTip = _("Where to write the DICOM SEG of the output segmentation")
        form.addRow(_("DICOM SEG file:"), self.dicomSegPathEdit)
        self.exportDicomSegButton = qt.QPushButton(_("Export DICOM SEG"))
        self.exportDicomSegButton.toolTip = _(
            "Write the output segmentation as a DICOM SEG referencing the input volume's DICOM series (the "
            "volume must have been loaded from Slicer's DICOM database)"
        )
        self.exportDicomSegButton.connect("clicked(bool)", self.on_export_dicom_seg)
        form.addRow(self.exportDicomSegButton)

    def update(self) -> None:
        """Export is disabled while an export or an install runs."""
        self.exportDicomSegButton.enabled = not (self.exporting or self.installer.installing)

    @property
    def exporting(self) -> bool:
        return self.jobs.side_job_named(EXPORT_JOB)

    def show_statistics(self, statistics) -> None:
        self.statisticsLabel.text = clinical_results.statistics_html(statistics) if statistics else ""

    def on_export_dicom_seg(self) -> None:
        if self.exporting or self.installer.installing:
            return
        node = self.parameters()
        path = self.dicomSegPathEdit.currentPath.strip()
        if not node or not node.inputVolume or not node.outputSegmentation:
            self.show_status(_("Choose the input volume and the output segmentation first."))
            return
        if not path.lower().endswith(".dcm"):
            self.show_status(_("Give a DICOM SEG file name ending in .dcm."))
            return
        try:
            prepared = self.logic.prepareDicomSeg(node.inputVolume, node.outputSegmentation)
        except SegVolError as error:
            self.show_error(error, True)
            return
        self.installer.ensure(
            self.dicom_requirements_file, needs_torch=False, interactive=True, then=lambda: self._write(prepared, path)
        )

    def _write(self, prepared, path) -> None:
        weights = self.weights()
        self.show_status(_("Writing the DICOM SEG..."))
        self.jobs.start_side_job(
            lambda reporter: self.logic.writeDicomSeg(prepared, path, weights), EXPORT_JOB, self._written(path)
        )
        self.update()
        self.jobs.serve()  # the GUI stays live while highdicom encodes

    def _written(self, path):
        def done(job):
            self.update()
            try:
                job.outcome()
            except SegVolError as error:
                self.show_error(error, True)
                return
            except Exception as error:  # highdicom's ValueError, a missing file, a missing package
                logging.error(traceback.format_exc())
                self.show_error(SegVolError(_("Export DICOM SEG failed: {error}").format(error=error)), True)
                return
            self.show_status(_("Wrote {path}.").format(path=path))

        return done
