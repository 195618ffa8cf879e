"""The `segvol` parser, assembled from each command's `add_parser`, and `main`: exit codes and the one-line
error every user mistake ends with."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import runtime
from ..errors import Cancelled, SegVolError
from . import batch, demo, evaluate, segment, serve

COMMANDS = (segment, evaluate, batch, demo, serve)
OUT_OF_MEMORY = "segvol: error: out of memory: use a machine with more memory or a smaller volume"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segvol",
        description="SegVol promptable 3-D CT segmentation (BAAI-DCAI/SegVol, zoom-out-zoom-in inference).",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; 0 done, 1 some dataset cases failed, 2 a user mistake, 130 cancelled/interrupted."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except Cancelled:
        print("segvol: cancelled", file=sys.stderr)
        return 130
    except SegVolError as error:
        print(f"segvol: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("segvol: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(OUT_OF_MEMORY, file=sys.stderr)
        return 2
    except RuntimeError as error:
        if runtime.is_out_of_memory(error):  # the GPU's is handled by the engine: here the CPU's
            print(OUT_OF_MEMORY, file=sys.stderr)
            return 2
        raise
