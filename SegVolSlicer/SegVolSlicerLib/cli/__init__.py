"""`segvol`: segment CT volumes with SegVol from the command line.

    segvol segment CT.nii.gz --text liver --text spleen -o out.seg.nrrd
    segvol evaluate --image CT.nii.gz --label GT.nii.gz --class liver=1 --prompt text+box --output-dir eval/
    segvol batch scans/ --text liver --text spleen --output-dir out/ [--ray local|ADDRESS]
    segvol evaluate --dataset Task03_Liver/ --output-dir eval/ [--ray local|ADDRESS]
    segvol demo
    segvol serve --device cuda:0 --api-key-file key.txt --host 0.0.0.0

User mistakes end with one line "segvol: error: ..." on stderr and exit code 2, never a traceback, and
never a partial output file. One module per command (its `add_parser`); the model stack is imported only
once a command has checked its arguments, so that a refusal is quick.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
