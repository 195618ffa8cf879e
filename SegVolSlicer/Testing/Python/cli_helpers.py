"""Running `segvol` in the tests: in this process (`run_cli`, `segvol_serve_in_thread`), or as the installed
command in another one (`segvol_command`, `segvol_env`: this checkout first on the path)."""

import contextlib
import os
import socket
import sys
import threading
import time
from pathlib import Path

import SegVolSlicerLib
from SegVolSlicerLib import cli

CHECKOUT = Path(SegVolSlicerLib.__file__).resolve().parents[1]  # the folder holding SegVolSlicerLib


def run_cli(argv, capsys):
    """`segvol ARGV` in this process: (exit code, stdout, stderr)."""
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@contextlib.contextmanager
def segvol_serve_in_thread(argv, monkeypatch):
    """`segvol serve --port P ARGV` as users start it, in a thread of this process: yields its URL once uvicorn
    has started, then stops it and checks the command ended."""
    import uvicorn

    started = []

    class RecordedServer(uvicorn.Server):
        def __init__(self, config):
            super().__init__(config)
            started.append(self)

    monkeypatch.setattr(uvicorn, "Server", RecordedServer)
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    thread = threading.Thread(target=cli.main, args=(["serve", "--port", str(port), *map(str, argv)],), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not (started and started[0].started):
            assert time.monotonic() < deadline and thread.is_alive(), "segvol serve did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        if started:
            started[0].should_exit = True
        thread.join(30)
    assert not thread.is_alive(), "segvol serve did not stop"


def segvol_command(*argv) -> list[str]:
    """`python -m SegVolSlicerLib.cli ARGV` for subprocess (with `segvol_env()`)."""
    return [sys.executable, "-m", "SegVolSlicerLib.cli", *map(str, argv)]


def segvol_env() -> dict[str, str]:
    """The environment in which another process imports this checkout's SegVolSlicerLib."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(CHECKOUT), os.environ.get("PYTHONPATH", "")])}
