"""Cancel reaches the steps before the first model pass: the weights download (between two chunks; the hub
keeps the partial file and resumes it next time), the model load, and the volume upload to a server.

What it guards: a Cancel (or a scene close) that only takes effect after minutes of downloading or uploading.
"""

import threading

import huggingface_hub
import pytest
from fake_segvol import FakeSegVol
from recording_reporter import RecordingReporter
from test_server import in_process

from SegVolSlicerLib.engine import EngineHost, ModelChoice
from SegVolSlicerLib.errors import Cancelled


def test_cancel_stops_the_weights_download_between_chunks(monkeypatch, tmp_path):
    chunks, partial = [], tmp_path / "pytorch_model.bin.incomplete"

    def fake_snapshot_download(repo, local_dir, allow_patterns, tqdm_class):
        received = tqdm_class(total=724, unit="B", desc="Downloading")
        for _ in range(724):  # as the hub: write a chunk to the partial file, then report it
            chunks.append(1)
            partial.write_bytes(b"x" * len(chunks))
            received.update(1)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, timeout: None)  # the hub answers
    engine = EngineHost(ModelChoice(cache_dir=str(tmp_path)))
    reporter = RecordingReporter(cancel_at="download", cancel_after=3)
    with pytest.raises(Cancelled):
        engine.model(reporter)
    assert len(chunks) == 4  # the chunk after the Cancel is the last one
    assert partial.stat().st_size == 4  # kept for the hub to resume from
    assert engine.loaded_model is None


def test_cancel_during_the_load_leaves_no_model(monkeypatch, tmp_path):
    loaded = threading.Event()

    def load_segvol(path, device, precision):
        loaded.set()
        return FakeSegVol()

    monkeypatch.setattr("SegVolSlicerLib.model.load_segvol", load_segvol)
    monkeypatch.setattr("SegVolSlicerLib.weights.resolve_weights", lambda *args, **kwargs: tmp_path)
    engine = EngineHost(ModelChoice(weights=str(tmp_path)))
    reporter = RecordingReporter(cancel_at="load", cancel_after=1)  # Cancel pressed as the load begins
    with pytest.raises(Cancelled):
        engine.model(reporter)
    assert not loaded.is_set() and engine.loaded_model is None


def test_cancel_stops_the_volume_upload_between_chunks(ct, monkeypatch):
    """A 512x512x300 CT is ~150 MB on the wire: Cancel must not wait for the rest of it. The session opened
    for the upload is closed, not left on the server."""
    monkeypatch.setattr("SegVolSlicerLib.client.UPLOAD_CHUNK", 1024)
    with in_process(EngineHost(model=FakeSegVol())) as (client, server):
        reporter = RecordingReporter(cancel_at="upload", cancel_after=2)
        with pytest.raises(Cancelled):
            client.open_session(ct.volume, ct.ijk_to_ras, reporter)
        sent = [done for stage, done, _ in reporter.events if stage == "upload"]
        assert sent == [0, 1024] and server.sessions == {}
