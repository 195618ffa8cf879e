"""The panel's *Run on* settings: this computer (device, weights file or snapshot folder) or a SegVol server
(address, API key, *Test connection*). Application settings, not scene content: a scene shared with others
never carries the server's key, which is kept for the session only unless the user ticks "remember" (then in
plain text, in the settings).
"""

from __future__ import annotations

import ctk
import qt
import slicer
from slicer.i18n import tr as _

from ..errors import SegVolError
from . import connection

WEIGHTS_SETTING = "SegVolSlicer/Weights"
RUN_ON_SETTING = "SegVolSlicer/RunOn"
SERVER_URL_SETTING = "SegVolSlicer/ServerURL"
SERVER_KEY_SETTING = "SegVolSlicer/ServerAPIKey"
RUN_ON = ("This computer", "A SegVol server")  # runOnComboBox's items, in index order
CONNECTION_TEST_JOB = "SegVol connection test"


class RunOn:
    """Where SegVol runs, as the Advanced section shows it; `jobs` runs *Test connection* beside the run."""

    def __init__(self, ui, logic, jobs):
        self.ui = ui
        self.logic = logic
        self.jobs = jobs
        self.dependencies_ready = False  # the packages of the current mode were found or installed

    def setup(self) -> None:
        settings = qt.QSettings()
        # ctkPathLineEdit's Browse opens a file dialog only: a snapshot folder has its own button
        self.ui.weightsPathLineEdit.filters = ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Readable
        self.ui.weightsPathLineEdit.nameFilters = ["SegVol weights (*.pth *.bin *.safetensors)", "All files (*)"]
        self.ui.weightsPathLineEdit.currentPath = settings.value(WEIGHTS_SETTING) or ""
        self.ui.weightsPathLineEdit.connect(
            "currentPathChanged(QString)", lambda path: qt.QSettings().setValue(WEIGHTS_SETTING, path)
        )
        self.ui.weightsFolderButton.connect("clicked(bool)", self.on_choose_weights_folder)
        self.ui.runOnComboBox.addItems(list(RUN_ON))
        self.ui.runOnComboBox.currentIndex = 1 if settings.value(RUN_ON_SETTING) == "server" else 0
        self.ui.serverUrlEdit.text = settings.value(SERVER_URL_SETTING) or ""
        remembered = settings.value(SERVER_KEY_SETTING) or ""
        self.ui.serverKeyEdit.text = remembered
        self.ui.rememberKeyCheckBox.checked = bool(remembered)
        self.ui.runOnComboBox.connect("currentIndexChanged(int)", self._on_run_on_changed)
        self.ui.serverUrlEdit.connect(
            "editingFinished()", lambda: qt.QSettings().setValue(SERVER_URL_SETTING, self.ui.serverUrlEdit.text.strip())
        )
        self.ui.serverKeyEdit.connect("editingFinished()", self._store_key)
        self.ui.rememberKeyCheckBox.connect("toggled(bool)", lambda checked: self._store_key())
        self.ui.testConnectionButton.connect("clicked(bool)", self.on_test_connection)
        self._show_run_on()

    def on_server(self) -> bool:
        return self.ui.runOnComboBox.currentIndex == 1

    def weights(self) -> str | None:
        return self.ui.weightsPathLineEdit.currentPath.strip() or None

    def use_engine(self) -> None:
        """Point the logic at the chosen engine (raises SegVolError for an unusable server address)."""
        if self.on_server():
            self.logic.useServer(self.ui.serverUrlEdit.text, self.ui.serverKeyEdit.text)
        else:
            self.logic.useThisComputer()

    def _store_key(self) -> None:
        """The key stays in this session's panel; only "remember" writes it to the settings (plain text)."""
        settings = qt.QSettings()
        if self.ui.rememberKeyCheckBox.checked:
            settings.setValue(SERVER_KEY_SETTING, self.ui.serverKeyEdit.text.strip())
        else:
            settings.remove(SERVER_KEY_SETTING)

    def on_test_connection(self) -> None:
        """The server's version, model, device and free sessions, or why not: asked on the worker thread."""
        if self.jobs.side_job_named(CONNECTION_TEST_JOB):
            return
        url, key = self.ui.serverUrlEdit.text, self.ui.serverKeyEdit.text
        self.ui.testConnectionButton.enabled = False
        self.ui.connectionStatusLabel.text = _("Connecting...")
        self.jobs.start_side_job(
            lambda reporter: connection.describe_server(url, key), CONNECTION_TEST_JOB, self._on_tested
        )
        self.jobs.serve()
        self.ui.testConnectionButton.enabled = not self.jobs.side_job_named(CONNECTION_TEST_JOB)

    def _on_tested(self, job) -> None:
        self.ui.testConnectionButton.enabled = True
        try:
            self.ui.connectionStatusLabel.text = job.outcome()
        except SegVolError as error:
            self.ui.connectionStatusLabel.text = str(error)

    def on_choose_weights_folder(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), _("SegVol snapshot folder"), self.ui.weightsPathLineEdit.currentPath
        )
        if folder:
            self.ui.weightsPathLineEdit.currentPath = folder

    def _on_run_on_changed(self, index) -> None:
        qt.QSettings().setValue(RUN_ON_SETTING, "server" if index == 1 else "local")
        self.dependencies_ready = False  # the other mode needs other packages (torch, or only the client's)
        self._show_run_on()

    def _show_run_on(self) -> None:
        server = self.on_server()
        for widget in (
            self.ui.serverUrlEdit,
            self.ui.serverKeyEdit,
            self.ui.rememberKeyCheckBox,
            self.ui.testConnectionButton,
        ):
            widget.enabled = server
        for widget in (self.ui.deviceComboBox, self.ui.weightsPathLineEdit, self.ui.weightsFolderButton):
            widget.enabled = not server  # the server's own choice
