"""Slicer never waits on a SegVol server from its GUI thread: closing sessions (a volume removed, a scene
closed, *Run on* or the address changed) returns at once, even when the server hangs; a session opened for a
volume that was removed meanwhile is closed, not left on the server; *Test connection* says what the server
runs, or why not, in one line.

The hung server: a socket on 127.0.0.1 that accepts connections and never answers.
"""

import contextlib
import logging
import socket
import threading
import time

import pytest
from fake_segvol import FakeSegVol
from slicer_app_standins import emit
from slicer_core_env import slicer_module, slicer_scene  # noqa: F401  (fixtures)
from test_slicer_widget import panel  # noqa: F401  (fixture)

from SegVolSlicerLib.client import RemoteEngine
from SegVolSlicerLib.engine import EngineHost, VolumeInput
from SegVolSlicerLib.errors import Cancelled
from SegVolSlicerLib.server import ServerSettings, create_app, serve_in_thread
from SegVolSlicerLib.testing.synthetic_ct import make_synthetic_ct

SILENT_FOR_S = 4.0  # the silent server closes its connections after this: a blocking close fails fast, not in 60 s


@contextlib.contextmanager
def silent_server():
    """http://127.0.0.1:<port> that accepts and never answers (a hung server); after SILENT_FOR_S it drops its
    connections, so that code that waits on it fails in seconds."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted, stop = [], threading.Event()

    def accept():
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(listener.accept()[0])

    def hang_up():
        for connection in list(accepted):
            connection.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    timer = threading.Timer(SILENT_FOR_S, hang_up)
    timer.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        timer.cancel()
        thread.join(5)
        for connection in accepted:
            connection.close()
        listener.close()


@pytest.fixture(scope="module")
def open_server():
    with serve_in_thread(create_app(EngineHost(model=FakeSegVol()), ServerSettings())) as url:
        yield url


@pytest.mark.parametrize("how", ["volume removed", "scene closed", "run here instead", "other server"])
def test_closing_sessions_never_waits_on_a_hung_server(slicer_module, slicer_scene, open_server, how):  # noqa: F811
    logic = slicer_module.SegVolSlicerLogic()
    ct = make_synthetic_ct()
    logic.useServer(open_server)
    engine = logic.engine
    engine.session(VolumeInput("vtkMRMLScalarVolumeNode1", ct.volume, ct.ijk_to_ras, signature=1))
    with silent_server() as url:
        engine.client.url = url  # the server hangs from now on
        start = time.perf_counter()
        if how == "volume removed":
            logic.forgetVolume("vtkMRMLScalarVolumeNode1")
        elif how == "scene closed":
            logic.forgetRemovedVolumes(slicer_scene)
        elif how == "run here instead":
            logic.useThisComputer()
        else:
            logic.useServer(open_server, "another key")  # a new key: a new engine
        assert time.perf_counter() - start < 1.0, "the GUI thread waited on the server"
        assert engine.session_keys() == []


def test_a_session_opened_for_a_removed_volume_is_closed(slicer_module):  # noqa: F811
    """The volume is removed (its session forgotten) while its upload runs: the new session must not be kept
    in the engine nor left open on the server."""
    app = create_app(EngineHost(model=FakeSegVol()), ServerSettings())
    ct = make_synthetic_ct()
    with serve_in_thread(app) as url:
        engine = RemoteEngine(url)
        open_session = engine.client.open_session

        def removed_during_upload(*args):
            session = open_session(*args)
            engine.forget("ct")  # onNodeAboutToBeRemoved, on the GUI thread, meanwhile
            return session

        engine.client.open_session = removed_during_upload
        with pytest.raises(Cancelled, match="closed while it was sent"):
            engine.segment(VolumeInput("ct", ct.volume, ct.ijk_to_ras, signature=1), [])
        assert engine.closer.join(10)
        assert engine.session_keys() == [] and app.state.server.sessions == {}
        engine.close()


@pytest.fixture(scope="module")
def keyed_server():
    with serve_in_thread(create_app(EngineHost(model=FakeSegVol()), ServerSettings(api_key="s3cret-key"))) as url:
        yield url


def ask_connection(widget, url, key):
    widget.ui.serverUrlEdit.text, widget.ui.serverKeyEdit.text = url, key
    emit(widget.ui.testConnectionButton, "clicked(bool)", False)
    return widget.ui.connectionStatusLabel.text


def test_test_connection_says_what_the_server_runs_or_why_not(panel, keyed_server, caplog):  # noqa: F811
    widget, parameters, dialogs = panel
    caplog.set_level(logging.DEBUG)
    line = ask_connection(widget, keyed_server, "s3cret-key")
    assert line.startswith("SegVolSlicer ") and "BAAI/SegVol on cpu" in line and "sessions free" in line, line
    assert "refused the API key" in ask_connection(widget, keyed_server, "wrong")
    with silent_server() as url:
        pass  # closed: nothing listens there any more
    assert "cannot reach" in ask_connection(widget, url, "s3cret-key")
    assert "s3cret-key" not in caplog.text  # the key never reaches the log
    assert dialogs == [] and widget.ui.testConnectionButton.enabled


def test_test_connection_keeps_slicer_responsive_while_the_server_hangs(panel, monkeypatch):  # noqa: F811
    widget, parameters, dialogs = panel
    monkeypatch.setattr("SegVolSlicerLib.slicer.connection.TEST_TIMEOUT_S", 1.0)
    handled = []
    widget.qtEvents = [lambda: handled.append(time.perf_counter())] * 1000
    with silent_server() as url:
        start = time.perf_counter()
        line = ask_connection(widget, url, "")
    assert "cannot reach" in line and "ReadTimeout" in line
    assert handled and handled[0] - start < 0.2  # Qt events were handled while it waited


def test_the_key_is_kept_for_the_session_unless_remembered(panel):  # noqa: F811
    import qt

    widget, parameters, dialogs = panel
    widget.ui.serverKeyEdit.text = "s3cret-key"
    emit(widget.ui.serverKeyEdit, "editingFinished()")
    assert qt.QSettings().value("SegVolSlicer/ServerAPIKey") is None
    widget.ui.rememberKeyCheckBox.checked = True
    emit(widget.ui.rememberKeyCheckBox, "toggled(bool)", True)
    assert qt.QSettings().value("SegVolSlicer/ServerAPIKey") == "s3cret-key"
    widget.ui.rememberKeyCheckBox.checked = False
    emit(widget.ui.rememberKeyCheckBox, "toggled(bool)", False)
    assert qt.QSettings().value("SegVolSlicer/ServerAPIKey") is None


@pytest.mark.parametrize("race", ["volume removed before its upload", "scene closed during the upload"])
def test_no_session_stays_open_after_its_volume_is_gone(slicer_module, slicer_scene, race):  # noqa: F811
    """Guards two races of a run on a server: the volume removed after Segment but before the worker opens its
    session (the forget came first, so the session opened next was kept), and a scene closed while the
    volume is sent (keep_only saw no session yet). Either way the session must not stay open on the server."""
    import slicer

    from SegVolSlicerLib.slicer import checks

    app = create_app(EngineHost(model=FakeSegVol()), ServerSettings())
    with serve_in_thread(app) as url:
        logic = slicer_module.SegVolSlicerLogic()
        logic.useServer(url)
        volume = checks.make_volume(checks.oblique_lps_ijk_to_ras())
        request = logic.prepare(volume, None, "liver")
        engine, opened = logic.engine, threading.Event()
        open_session = engine.client.open_session

        def opening(*args):
            session = open_session(*args)
            opened.set()
            if race == "scene closed during the upload":
                assert closed.wait(30)
            return session

        engine.client.open_session = opening
        closed = threading.Event()
        if race == "volume removed before its upload":
            logic.forgetVolume(volume.GetID())  # onNodeAboutToBeRemoved, on the GUI thread
            slicer.mrmlScene.RemoveNode(volume)
        worker = threading.Thread(target=run, args=(logic, request))
        worker.start()
        if race == "scene closed during the upload":
            assert opened.wait(30)
            slicer.mrmlScene.Clear(0)
            logic.forgetRemovedVolumes(slicer.mrmlScene)  # the panel's onSceneEndClose
            closed.set()
        worker.join(30)
        assert engine.closer.join(10)
        assert app.state.server.sessions == {}, "a session stayed open for a volume that is gone"
        engine.close()


def run(logic, request):
    with contextlib.suppress(Exception):  # the run's own outcome does not matter here
        logic.run(request)
