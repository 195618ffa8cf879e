"""The OpenAPI document is the contract: Schemathesis (an independent reader, `--checks all`) sends what the
document allows and what it forbids to a real uvicorn on 127.0.0.1, with the key and without one, and every
answer must be what the document says. Bounded: a fixed seed, a few examples per operation (~1 minute each)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fake_segvol import FakeSegVol

from SegVolSlicerLib.engine import EngineHost
from SegVolSlicerLib.server import ServerSettings, create_app, serve_in_thread

CONFIG = Path(__file__).with_name("schemathesis.toml")
KEY = "contract-key"


@pytest.mark.parametrize("api_key", [None, KEY], ids=["without a key", "with a key"])
def test_schemathesis_finds_nothing_the_document_does_not_say(api_key):
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st is not None, "Schemathesis (the test extra) is not installed"
    # small limits: a generated volume stays small, and 413 for larger ones is what the server says
    settings = ServerSettings(api_key=api_key, max_memory_mb=256, max_dimension=64, max_voxels=64**3)
    with serve_in_thread(create_app(EngineHost(model=FakeSegVol()), settings)) as url:
        command = [st, "--config-file", str(CONFIG), "run", f"{url}/openapi.json", "--checks", "all"]
        command += ["--seed", "1", "--max-examples", "20", "--workers", "1", "--no-color"]
        command += ["--header", f"Authorization: Bearer {api_key}"] if api_key else []
        run = subprocess.run(command, capture_output=True, encoding="utf-8", timeout=400)
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failures" not in run.stdout.rpartition("SUMMARY")[2]
