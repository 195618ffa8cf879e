"""Running `segvol` in the tests: in this process (`run_cli`), or as the installed command in another one
(`segvol_command`, `segvol_env`: this checkout first on the path)."""

import os
import sys
from pathlib import Path

import SegVolSlicerLib
from SegVolSlicerLib import cli

CHECKOUT = Path(SegVolSlicerLib.__file__).resolve().parents[1]  # the folder holding SegVolSlicerLib


def run_cli(argv, capsys):
    """`segvol ARGV` in this process: (exit code, stdout, stderr)."""
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def segvol_command(*argv) -> list[str]:
    """`python -m SegVolSlicerLib.cli ARGV` for subprocess (with `segvol_env()`)."""
    return [sys.executable, "-m", "SegVolSlicerLib.cli", *map(str, argv)]


def segvol_env() -> dict[str, str]:
    """The environment in which another process imports this checkout's SegVolSlicerLib."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(CHECKOUT), os.environ.get("PYTHONPATH", "")])}
