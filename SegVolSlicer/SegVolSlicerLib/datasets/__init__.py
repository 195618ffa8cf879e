"""Whole datasets: `segvol batch` (segment every CT) and `segvol evaluate --dataset`, here or on a Ray cluster.

    cases = discover_cases(["scans/", "more.nii.gz", "manifest.csv"])
    run_cases(SegmentJob(choice, options, str(out), texts=("liver", "spleen")), cases)

- `cases`: finding cases (files, folders, DICOM folders, manifests, MSD/nnU-Net layouts).
- `jobs`: what is done with each case (segment, evaluate), one case at a time, and the job's fingerprint.
- `records`: a record per case, committed atomically by whoever computed it; results.csv rebuilt from them.
- `runner`: running a job over the cases, here or on Ray; resuming, refusing another job (or --redo).
- `tables`: the dataset evaluation's tables and box plot.
"""
