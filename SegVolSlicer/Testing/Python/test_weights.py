"""Where weights come from: local files and folders, the download folder, and the offline message."""

import pytest
from huggingface_hub import constants

from SegVolSlicerLib.errors import CheckpointError
from SegVolSlicerLib.weights import DEMO_CT, resolve_demo_ct, resolve_weights


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No hub access, and an empty download folder."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("SEGVOL_HOME", str(tmp_path / "segvol-home"))
    return tmp_path / "segvol-home"


def test_local_checkpoint_file_is_returned(synthetic_checkpoint):
    assert resolve_weights(synthetic_checkpoint) == synthetic_checkpoint


def test_local_snapshot_folder_is_returned(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"PK\x03\x04")  # a zip archive, as torch.save writes
    assert resolve_weights(tmp_path) == tmp_path


def write(path, content: bytes):
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.pth", "does not exist"),
        (lambda p: p, "no SegVol weights in folder"),
        (lambda p: write(p / "SegVol_v1.pth", b"version https://git-lfs.github.com/spec/v1\n"), "Git LFS pointer"),
        (lambda p: write(p / "page.pth", b"<html>Not Found</html>"), "not a PyTorch checkpoint"),
        (lambda p: write(p / "pytorch_model.bin", b""), "not a PyTorch checkpoint"),  # an interrupted download
    ],
)
def test_bad_local_sources(tmp_path, make, message):
    with pytest.raises(CheckpointError, match=message):
        resolve_weights(make(tmp_path))


def test_download_folder_with_weights_is_used_without_network(offline):
    offline.mkdir()
    (offline / "SegVol_v1.pth").write_bytes(b"")
    assert resolve_weights() == offline


def test_offline_says_what_to_download_and_where(offline):
    with pytest.raises(CheckpointError) as error:
        resolve_weights()
    message = str(error.value)
    assert "https://huggingface.co/BAAI/SegVol/resolve/main/pytorch_model.bin" in message
    assert "config.json" in message and str(offline) in message
    with pytest.raises(CheckpointError, match=DEMO_CT):
        resolve_demo_ct()


def test_demo_ct_found_in_folder(tmp_path):
    (tmp_path / DEMO_CT).write_bytes(b"")
    assert resolve_demo_ct(tmp_path) == tmp_path / DEMO_CT


def test_download_reports_bytes_and_turns_network_failures_into_one_error(monkeypatch, tmp_path):
    """The progress callback sees only the byte bar; a connection lost mid-download is a CheckpointError."""
    import huggingface_hub

    class ReadError(Exception):  # like the hub HTTP client's own errors: not an OSError
        pass

    reported = []

    def fake_snapshot_download(repo, local_dir, allow_patterns, tqdm_class):
        files = tqdm_class(total=3, desc="Fetching 3 files")  # files-done bar: not reported
        files.update(1)
        received = tqdm_class(total=1000, unit="B", desc="Downloading bytes")
        received.update(400)
        raise ReadError("connection reset by peer")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, timeout: None)  # the hub answers
    with pytest.raises(CheckpointError, match="cannot download the SegVol weights .*broke off .*connection reset"):
        resolve_weights(cache_dir=tmp_path, progress=lambda *args: reported.append(args))
    assert reported == [("download", 400, 1000)]


def test_unreachable_hub_is_said_at_once_in_whole_sentences(monkeypatch, tmp_path):
    """Without a network the hub's client retries for half a minute and its message was cut mid-word: one
    quick request decides, and the message is ours."""
    import huggingface_hub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    requests = []

    def unreachable(url, timeout):
        requests.append(url)
        raise ConnectionError("[Errno -2] Name or service not known")  # as the hub's HTTP client raises

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", unreachable)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("no download attempt"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("no download attempt"))
    cases = (
        (lambda: resolve_weights(cache_dir=tmp_path), "as the checkpoint."),
        (lambda: resolve_demo_ct(tmp_path), "as segvol demo --source FOLDER."),  # demo has no checkpoint option
    )
    for resolve, ending in cases:
        with pytest.raises(CheckpointError) as error:
            resolve()
        message = str(error.value)
        assert "cannot be reached from this computer" in message and message.endswith(ending)
        assert "try aga" not in message and "Name or service" not in message
    assert len(requests) == 2


def test_hf_hub_offline_is_honoured(offline):
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE is set"):
        resolve_weights()
