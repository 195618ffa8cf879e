"""`python -m SegVolSlicerLib.cli`: the `segvol` command."""

import sys

from .main import main

sys.exit(main())
