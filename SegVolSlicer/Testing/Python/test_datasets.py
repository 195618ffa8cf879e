"""`segvol batch` and `segvol evaluate --dataset`: outputs equal to the single-case commands, failures recorded,
resume after SIGKILL, Ray Data on loopback."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from cli_helpers import run_cli, segvol_command, segvol_env
from fake_segvol import FakeSegVol, FullGpuSegVol

from SegVolSlicerLib import cli
from SegVolSlicerLib.datasets import cases as dataset_cases
from SegVolSlicerLib.datasets import jobs as dataset_jobs
from SegVolSlicerLib.engine import EngineHost
from SegVolSlicerLib.errors import InputError
from SegVolSlicerLib.testing.synthetic_ct import SyntheticCT, make_synthetic_ct, write_ct


@pytest.fixture(scope="module")
def ct():
    return make_synthetic_ct()


def tiny_ct(ct, shift: int) -> SyntheticCT:
    """A small CT (18 x 40 x 48 voxels) cut from the synthetic one, starting `4 * shift` slices up (cases differ)."""
    cut = np.s_[4 * shift : 4 * shift + 36 : 2, ::4, ::4]
    first_slice = np.eye(4)
    first_slice[2, 3] = 4 * shift
    ijk_to_ras = ct.ijk_to_ras @ first_slice @ np.diag([4.0, 4.0, 2.0, 1.0])  # i, j, k strides
    return SyntheticCT(np.ascontiguousarray(ct.volume[cut]), np.ascontiguousarray(ct.labels[cut]), ijk_to_ras)


@pytest.fixture(scope="module")
def scans(ct, tmp_path_factory):
    """Three tiny CTs in a folder (with their label maps in another)."""
    folder = tmp_path_factory.mktemp("scans")
    (folder / "labels").mkdir()
    for n in range(3):
        write_ct(tiny_ct(ct, n), folder / f"case {n}.nii.gz", folder / "labels" / f"case {n}.nii.gz")
    return folder


@pytest.fixture
def fake_model(stand_in_model):
    return stand_in_model(FakeSegVol())


def read_rows(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def voxels_and_header(path):
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), {key: image.GetMetaData(key) for key in image.GetMetaDataKeys()}


def assert_same_segmentation(path, reference):
    """Same voxels, geometry and segment fields (name, colour, terminology...) as `segvol segment` wrote."""
    (voxels, header), (expected_voxels, expected_header) = voxels_and_header(path), voxels_and_header(reference)
    np.testing.assert_array_equal(voxels, expected_voxels)
    assert header == expected_header
    written, wanted = sitk.ReadImage(str(path)), sitk.ReadImage(str(reference))
    assert written.GetOrigin() == wanted.GetOrigin() and written.GetDirection() == wanted.GetDirection()


# --- inputs ---


def test_cases_of_files_folders_dicom_and_manifests_get_unique_safe_ids(tmp_path, ct):
    """Guards: a folder read as one case, a DICOM folder split per file, ids clashing or unsafe as file names,
    manifest paths taken relative to the working folder instead of the CSV."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    small = tiny_ct(ct, 0)
    write_ct(small, tmp_path / "a" / "x.nii.gz")
    write_ct(small, tmp_path / "a" / "y.nrrd")
    (tmp_path / "a" / ".hidden.nii.gz").write_bytes(b"")
    write_ct(small, tmp_path / "b" / "x.mha")
    dicom = tmp_path / "patient 7"
    dicom.mkdir()
    for n in range(3):
        (dicom / f"IM{n}").write_bytes(b"DICM")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "m.csv").write_text("image,id\n../b/x.mha,scan/1\n../a/y.nrrd,\n")
    cases = dataset_cases.discover_cases(
        [tmp_path / "a", tmp_path / "b" / "x.mha", dicom, tmp_path / "lists" / "m.csv"]
    )
    assert [(c.id, Path(c.image).relative_to(tmp_path).as_posix()) for c in cases] == [
        ("x", "a/x.nii.gz"),
        ("y", "a/y.nrrd"),
        ("x-2", "b/x.mha"),
        ("patient_7", "patient 7"),
    ]
    cases = dataset_cases.discover_cases([tmp_path / "lists" / "m.csv"])
    assert [(c.id, Path(c.image).name) for c in cases] == [("scan_1", "x.mha"), ("y", "y.nrrd")]
    (tmp_path / "bad.csv").write_text("path\nx.nii.gz\n")
    with pytest.raises(InputError, match="no column image"):
        dataset_cases.discover_cases([tmp_path / "bad.csv"])
    (tmp_path / "dup.csv").write_text("image,id\na/x.nii.gz,s\na/y.nrrd,s\n")
    with pytest.raises(InputError, match="unique"):
        dataset_cases.discover_cases([tmp_path / "dup.csv"])


# --- batch here, with the stand-in model ---


def test_batch_equals_segment_and_records_a_corrupt_case(scans, tmp_path, fake_model, synthetic_checkpoint, capsys):
    """Guards: batch outputs differing from `segvol segment` (names, colours, voxels), one bad case stopping the
    others, a rerun recomputing done cases or skipping failed ones."""
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"not a CT at all")
    out = tmp_path / "out"
    argv = ["batch", scans, corrupt, "--text", "liver", "--text", "spleen", "--output-dir", out]
    argv += ["--checkpoint", synthetic_checkpoint]  # hashed for the job's fingerprint; the stand-in runs
    code, stdout, err = run_cli(argv, capsys)
    assert code == 1, err  # some case failed
    rows = {row["id"]: row for row in read_rows(out / "results.csv")}
    assert list(rows) == ["case_0", "case_1", "case_2", "corrupt"]
    assert [rows[i]["status"] for i in rows] == ["ok", "ok", "ok", "failed"]
    assert "cannot read image" in rows["corrupt"]["error"] and not (out / "corrupt.seg.nrrd").exists()
    assert "corrupt failed" in err and "3 case(s) done, 1 failed" in stdout
    assert sorted(p.name for p in out.iterdir() if p.name != ".segvol") == [
        "case_0.seg.nrrd",
        "case_1.seg.nrrd",
        "case_2.seg.nrrd",
        "results.csv",
        "stats",
        "stats.csv",
    ]  # no temporary file left
    assert sorted(p.name for p in (out / "stats").iterdir()) == ["case_0.csv", "case_1.csv", "case_2.csv"]
    for n in range(3):
        reference = tmp_path / f"segment {n}.seg.nrrd"
        code, _, err = run_cli(
            ["segment", scans / f"case {n}.nii.gz", "--text", "liver", "--text", "spleen", "-o", reference], capsys
        )
        assert code == 0, err
        assert_same_segmentation(out / f"case_{n}.seg.nrrd", reference)

    # The rerun: the corrupt file was fixed; only it runs.
    write_ct(make_synthetic_ct(), corrupt)
    before = {n: (out / f"case_{n}.seg.nrrd").stat().st_mtime_ns for n in range(3)}
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "3 of 4 case(s) already done" in err and "1 case(s) done, 0 failed, 3 skipped" in stdout
    assert {n: (out / f"case_{n}.seg.nrrd").stat().st_mtime_ns for n in range(3)} == before
    rerun = {row["id"]: row for row in read_rows(out / "results.csv")}
    assert [row["status"] for row in rerun.values()] == ["ok"] * 4
    assert all(rerun[i] == rows[i] for i in ("case_0", "case_1", "case_2"))  # their rows kept as recorded


def test_batch_refuses_bad_arguments(scans, tmp_path, fake_model, capsys):
    (tmp_path / "a file").write_text("")
    for argv, message in [
        (["batch", tmp_path / "missing", "--text", "liver", "--output-dir", tmp_path / "o"], "input not found"),
        (["batch", scans, "--text", " ", "--output-dir", tmp_path / "o"], "at least one --text"),
        (["batch", scans, "--text", "liver", "--output-dir", tmp_path / "o", "--workers", "2"], "--ray"),
        (["batch", scans, "--text", "liver", "--output-dir", tmp_path / "a file"], "is a file"),
        # checked before Ray starts: one error, not one per actor
        (
            [
                "batch",
                scans,
                "--text",
                "liver",
                "--output-dir",
                tmp_path / "o",
                "--ray",
                "local",
                "--checkpoint",
                tmp_path / "missing.pth",
            ],
            "missing.pth",
        ),
    ]:
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and err.startswith("segvol: error: ") and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("case", ["the input folder", "inside a DICOM case", "onto a case", "onto the manifest"])
def test_a_batch_output_folder_that_would_write_into_or_over_inputs_is_refused(
    case, scans, tmp_path, capsys, stand_in_model
):
    """Guards: batch outputs landing in an input folder (a DICOM series, or a folder of cases that the next run
    takes as cases), or replacing an input file (a case, a manifest); checked before any model loads."""
    stand_in_model(None)
    out = tmp_path / "out"
    out.mkdir()
    if case == "the input folder":
        inputs, output_dir = [out], out
        (out / "ct.nii.gz").write_bytes((scans / "case 0.nii.gz").read_bytes())
    elif case == "inside a DICOM case":
        series = tmp_path / "series"
        series.mkdir()
        (series / "IM0000.dcm").write_bytes(b"DICM")
        inputs, output_dir = [series], series / "segvol"
    elif case == "onto a case":  # a manifest's case whose id names its output as the case's own file
        (out / "ct.seg.nrrd").write_bytes((scans / "case 0.nii.gz").read_bytes())
        (tmp_path / "cases.csv").write_text(f"id,image\nct,{out / 'ct.seg.nrrd'}\n")
        inputs, output_dir = [tmp_path / "cases.csv"], out
    else:
        (out / "results.csv").write_text(f"image\n{scans / 'case 0.nii.gz'}\n")
        inputs, output_dir = [out / "results.csv"], out
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    code, _, err = run_cli(["batch", *inputs, "--text", "liver", "--output-dir", output_dir], capsys)
    assert code == 2 and err.count("\n") == 1 and "input" in err, err
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before


def test_batch_names_a_missing_extra_before_any_case_runs(scans, tmp_path, capsys, monkeypatch, stand_in_model):
    """Guards: `--output-format dicom-seg` without the [dicom] extra failing every case after its model run,
    with no install hint."""
    stand_in_model(None)
    for name in ("pydicom", "highdicom"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    argv = ["batch", scans, "--text", "liver", "--output-dir", tmp_path / "o", "--output-format", "dicom-seg"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and err.count("\n") == 1 and "pip install 'SegVolSlicer[dicom]'" in err, err
    assert not (tmp_path / "o").exists()


RERUN = """
import sys
from SegVolSlicerLib.cli import main
code = main(sys.argv[1:])
print("torch imported" if "torch" in sys.modules else "torch not imported", code)
"""


def test_a_rerun_with_nothing_to_do_does_not_import_the_model_stack(
    scans, tmp_path, fake_model, synthetic_checkpoint, capsys
):
    """Guards: a batch rerun with every case done taking 12 s to import torch (for the weights' fingerprint)."""
    argv = ["batch", scans, "--text", "liver", "--output-dir", tmp_path / "out", "--checkpoint", synthetic_checkpoint]
    assert run_cli(argv, capsys)[0] == 0
    done = subprocess.run(
        [sys.executable, "-c", RERUN, *map(str, argv)], env=segvol_env(), capture_output=True, text=True, timeout=120
    )
    assert "3 of 3 case(s) already done" in done.stderr, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "torch not imported 0", (done.stdout, done.stderr)


# --- evaluate --dataset ---


def msd_dataset(folder, scans, cases=(0, 1)):
    """An MSD-layout dataset (dataset.json with labels and a training list) of the tiny CTs."""
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    training = []
    for n in cases:
        (folder / "imagesTr" / f"ct_{n}.nii.gz").write_bytes((scans / f"case {n}.nii.gz").read_bytes())
        (folder / "labelsTr" / f"ct_{n}.nii.gz").write_bytes((scans / "labels" / f"case {n}.nii.gz").read_bytes())
        training.append({"image": f"./imagesTr/ct_{n}.nii.gz", "label": f"./labelsTr/ct_{n}.nii.gz"})
    (folder / "dataset.json").write_text(
        json.dumps(
            {
                "name": "tiny",
                "labels": {"0": "background", "1": "liver", "2": "spleen"},
                "numTraining": len(training),
                "training": training,
            }
        )
    )
    return folder


def test_msd_and_nnunet_label_lists_are_each_read_their_own_way(tmp_path, scans):
    """Guards: nnU-Net v2 labels ({name: value}) read as MSD's ({value: name}), the _0000 channel not paired,
    background evaluated as a class, macOS '._' files taken for cases."""
    from SegVolSlicerLib.datasets.cases import discover_dataset

    cases, classes = discover_dataset(str(msd_dataset(tmp_path / "msd", scans)))
    assert classes == [("liver", 1), ("spleen", 2)]
    assert [(c.id, Path(c.image).name, Path(c.label).name) for c in cases] == [
        ("ct_0", "ct_0.nii.gz", "ct_0.nii.gz"),
        ("ct_1", "ct_1.nii.gz", "ct_1.nii.gz"),
    ]
    v2 = tmp_path / "Dataset001_Tiny"
    (v2 / "imagesTr").mkdir(parents=True)
    (v2 / "labelsTr").mkdir()
    for name in ("ct_0_0000.nii.gz", "ct_1_0000.nii.gz"):
        (v2 / "imagesTr" / name).write_bytes(b"")
    for name in ("ct_0.nii.gz", "ct_1.nii.gz", "._ct_0.nii.gz"):
        (v2 / "labelsTr" / name).write_bytes(b"")
    (v2 / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1}, "file_ending": ".nii.gz"}))
    cases, classes = discover_dataset(str(v2))
    assert classes == [("liver", 1)]
    assert [(c.id, Path(c.image).name) for c in cases] == [("ct_0", "ct_0_0000.nii.gz"), ("ct_1", "ct_1_0000.nii.gz")]
    (v2 / "labelsTr" / "ct_2.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="ct_2_0000.nii.gz"):
        discover_dataset(str(v2))


def test_dataset_evaluation_equals_single_case_evaluate(tmp_path, scans, fake_model, synthetic_checkpoint, capsys):
    """Guards: the dataset run and single-case `segvol evaluate` writing other files or metrics for the same case
    (file names of classes with spaces, prompts, sessions shared across cases), a summary that is not mean ± sd
    of the per-case Dice, a missing box plot."""
    dataset = msd_dataset(tmp_path / "Task99_Tiny", scans)
    out = tmp_path / "eval"
    classes = ["--class", "liver=1", "--class", "left kidney=2"]  # a name with a space: its file keeps it
    # Zoom-out only: the stand-in's zoom-in finds nothing on CTs this small, and Dice 0 everywhere proves nothing.
    argv = ["evaluate", "--dataset", dataset, *classes, "--prompt", "text+box", "--prompt", "point", "--no-zoom-in"]
    argv += ["--output-dir", out, "--checkpoint", synthetic_checkpoint]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    metrics = read_rows(out / "metrics.csv")
    assert [(r["case"], r["class"], r["prompt"]) for r in metrics] == [
        (case, name, prompt)
        for case in ("ct_0", "ct_1")
        for prompt in ("text+box", "point")
        for name in ("liver", "left kidney")
    ]
    for case in ("ct_0", "ct_1"):
        for prompt in ("text+box", "point"):
            single = tmp_path / f"single-{case}-{prompt}"
            code, _, err = run_cli(
                [
                    "evaluate",
                    "--image",
                    dataset / "imagesTr" / f"{case}.nii.gz",
                    "--label",
                    dataset / "labelsTr" / f"{case}.nii.gz",
                    *classes,
                    "--prompt",
                    prompt,
                    "--no-zoom-in",
                    "--output-dir",
                    single,
                ],
                capsys,
            )
            assert code == 0, err
            written = {p.name: p.read_bytes() for p in single.iterdir()}
            assert sorted(written) == ["left kidney.nii.gz", "liver.nii.gz", "metrics.csv"]
            assert {p.name: p.read_bytes() for p in (out / "cases" / case / prompt).iterdir()} == written
            expected = {r["class"]: r["dice"] for r in read_rows(single / "metrics.csv")}
            assert {r["class"]: r["dice"] for r in metrics if r["case"] == case and r["prompt"] == prompt} == expected
            assert all(float(dice) > 0 for dice in expected.values())
    summary = {(r["class"], r["prompt"]): r for r in read_rows(out / "summary.csv")}
    dice = [float(r["dice"]) for r in metrics if r["class"] == "left kidney" and r["prompt"] == "point"]
    row = summary[("left kidney", "point")]
    assert row["cases"] == "2" and dice[0] != dice[1]
    assert float(row["dice_mean"]) == pytest.approx(np.mean(dice), abs=1e-6)
    assert float(row["dice_sd"]) == pytest.approx(np.std(dice, ddof=1), abs=1e-6)
    assert (out / "dice.png").read_bytes().startswith(b"\x89PNG")
    assert "left kidney (point): Dice" in stdout
    assert [r["status"] for r in read_rows(out / "results.csv")] == ["ok", "ok"]
    tables = {name: (out / name).read_bytes() for name in ("metrics.csv", "summary.csv")}
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0 and "2 of 2 case(s) already done" in err, err  # the rerun computes nothing ...
    assert {name: (out / name).read_bytes() for name in tables} == tables  # ... and writes the same tables


def test_labels_of_the_same_name_in_different_folders(tmp_path, scans):
    """Guards: label files that share a name (in different folders) refused as duplicate ids or given one id."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "ct.nii.gz").write_bytes((scans / "labels" / "case 0.nii.gz").read_bytes())
    (tmp_path / "pairs.csv").write_text(
        f"image,label\n{scans / 'case 0.nii.gz'},a/ct.nii.gz\n{scans / 'case 1.nii.gz'},b/ct.nii.gz\n"
    )
    cases, _ = dataset_cases.discover_dataset(str(tmp_path / "pairs.csv"))
    assert [(c.id, Path(c.label).parent.name) for c in cases] == [("ct", "a"), ("ct-2", "b")]


# --- what a run records: the job's fingerprint, output checksums ---


@pytest.fixture
def computed(monkeypatch):
    """The ids of the cases a run computes (in this process)."""
    ids = []
    real_run = dataset_jobs.SegmentJob.run
    monkeypatch.setattr(
        dataset_jobs.SegmentJob,
        "run",
        lambda self, host, case, *a: ids.append(case.id) or real_run(self, host, case, *a),
    )
    return ids


def test_a_case_is_done_only_for_the_same_job_with_its_outputs_intact(
    scans, tmp_path, fake_model, synthetic_checkpoint, computed, capsys
):
    """Guards: a rerun with other texts silently skipping the cases of the old job (or redoing them without
    being asked), --redo recomputing more or fewer cases than those of another job, added inputs recomputing
    done cases, a truncated or edited output taken for done."""
    out = tmp_path / "out"

    def batch(n_cases, *options):
        inputs = [scans / f"case {n}.nii.gz" for n in range(n_cases)]
        computed.clear()
        code, stdout, err = run_cli(
            ["batch", *inputs, "--output-dir", out, "--checkpoint", synthetic_checkpoint, *options], capsys
        )
        return code, list(computed), err

    assert batch(2, "--text", "liver")[:2] == (0, ["case_0", "case_1"])
    assert batch(3, "--text", "liver")[:2] == (0, ["case_2"])  # added inputs: only the new case
    before = {p.name: p.read_bytes() for p in out.glob("*.seg.nrrd")}
    code, done, err = batch(3, "--text", "spleen")
    assert code == 2 and done == [] and "--redo" in err and "new --output-dir" in err, err
    assert "texts ['liver'] -> ['spleen']" in err, err
    assert {p.name: p.read_bytes() for p in out.glob("*.seg.nrrd")} == before  # nothing touched
    assert batch(2, "--text", "spleen", "--redo")[:2] == (0, ["case_0", "case_1"])
    assert batch(3, "--text", "spleen", "--redo")[:2] == (0, ["case_2"])  # only the one of the other job
    assert batch(3, "--text", "spleen", "--no-zoom-in")[0] == 2  # an option is part of the job too
    seg = out / "case_1.seg.nrrd"
    seg.write_bytes(seg.read_bytes()[:-100])  # truncated behind the run's back
    code, done, err = batch(3, "--text", "spleen")
    assert (code, done) == (0, ["case_1"]) and "case_1: case_1.seg.nrrd changed" in err, err
    rows = read_rows(out / "results.csv")
    assert [(r["id"], r["status"]) for r in rows] == [("case_0", "ok"), ("case_1", "ok"), ("case_2", "ok")]
    assert len({r["fingerprint"] for r in rows}) == 1


# --- SIGKILL of the driver ---

KILL_MOMENTS = {  # moment -> (cases computed by the rerun, the moment's description)
    "case:1": 3,  # before any case
    "writing:2": 2,  # while the second case's output is being written
    "record:2": 2,  # the second case's output complete, its record not yet written
    "rename:2": 1,  # its record written, its output not yet under its final name
    "results:3": 0,  # after the last case's record, as results.csv is rewritten
}


@pytest.mark.parametrize("moment", list(KILL_MOMENTS))
def test_a_killed_run_resumes_without_recomputing_a_complete_case(
    moment, scans, tmp_path, fake_model, synthetic_checkpoint, computed, capsys
):
    """Guards: a SIGKILL leaving a partial file under a final name, a rerun computing again a case whose
    record was written (or skipping one whose record was not), results.csv incomplete after the rerun."""
    out = tmp_path / "out"
    argv = ["batch", *(scans / f"case {n}.nii.gz" for n in range(3)), "--text", "liver", "--output-dir", out]
    argv += ["--checkpoint", synthetic_checkpoint]
    killed = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("kill_at.py")), moment, *map(str, argv)],
        env=segvol_env(),
        capture_output=True,
        encoding="utf-8",  # tqdm's bar; not the locale's encoding, which GDCM's DICOM reader may have set to C
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    for path in out.rglob("*"):  # every file under a final name is complete (temporaries are hidden)
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(out).parts):
            if path.name.endswith(".seg.nrrd"):
                sitk.ReadImage(str(path))
            elif path.parent.name == "stats":  # a case's statistics, whole: every segment's row
                assert [row["segment"] for row in read_rows(path)] == ["liver"] and read_rows(path)[0]["coordinates"]
            else:
                assert path.name in ("results.csv", "stats.csv") and read_rows(path) is not None
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert len(computed) == KILL_MOMENTS[moment], (computed, err)
    assert [(r["id"], r["status"]) for r in read_rows(out / "results.csv")] == [
        ("case_0", "ok"),
        ("case_1", "ok"),
        ("case_2", "ok"),
    ]
    assert sorted(p.name for p in out.iterdir() if p.name != ".segvol") == [
        "case_0.seg.nrrd",
        "case_1.seg.nrrd",
        "case_2.seg.nrrd",
        "results.csv",
        "stats",
        "stats.csv",
    ]
    assert not (out / ".segvol" / "staging").exists() or not any((out / ".segvol" / "staging").iterdir())


# --- synthetic weights in other processes: SIGKILL and Ray ---

SEGMENT_OPTIONS = ["--text", "liver", "--no-zoom-in", "--device", "cpu", "--precision", "fp32"]


@pytest.fixture(scope="module")
def segment_references(scans, synthetic_model, tmp_path_factory):
    """`segvol segment` of cases 0 and 1 with the synthetic weights (fp32, zoom-out), the model loaded once."""
    folder = tmp_path_factory.mktemp("references")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(EngineHost, "model", lambda self, reporter=None: synthetic_model)
        for n in range(2):
            assert (
                cli.main(
                    [
                        "segment",
                        str(scans / f"case {n}.nii.gz"),
                        *SEGMENT_OPTIONS,
                        "-o",
                        str(folder / f"case_{n}.seg.nrrd"),
                    ]
                )
                == 0
            )
    return folder


def batch_command(inputs, out, checkpoint, *extra):
    return segvol_command("batch", *inputs, "--output-dir", out, "--checkpoint", checkpoint, *SEGMENT_OPTIONS, *extra)


ACTOR_SITE = """
import os
import sys

if "ray" in " ".join(sys.argv) and "SegVolSlicerLib" not in sys.modules:  # Ray's worker processes
    from SegVolSlicerLib import imageio

    read_ct = imageio.read_ct

    def read_or_die(path, *args, **kwargs):
        if os.path.basename(str(path)) == "lost.nii.gz":
            os._exit(1)  # as a worker killed by the OOM killer, or on a node that left
        return read_ct(path, *args, **kwargs)

    imageio.read_ct = read_or_die
"""


def test_ray_local_killed_leaves_no_process_and_resumes(
    scans, tmp_path, synthetic_checkpoint, segment_references, capsys, monkeypatch
):
    """Guards: a case committed by a Ray actor computed again after a SIGKILL of the driver (the driver recording
    later than the actors write), Ray processes outliving the killed driver, a lost worker stopping the run (or
    looping on its case) instead of failing that case alone, Ray workers writing other outputs than
    `segvol segment`, Ray reaching beyond loopback (127.0.0.1, dashboard off, CPUs declared)."""
    pytest.importorskip("ray")
    import psutil  # Ray ships it
    import ray

    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setenv("PYTHONPATH", segvol_env()["PYTHONPATH"])  # the actors import this checkout
    inputs = [scans / f"case {n}.nii.gz" for n in range(3)]
    lost = tmp_path / "lost.nii.gz"  # its worker process dies whenever it reads it (see ACTOR_SITE)
    lost.write_bytes(inputs[2].read_bytes())
    site = tmp_path / "actor-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(ACTOR_SITE)
    out = tmp_path / "out"
    process = subprocess.Popen(
        batch_command(inputs, out, synthetic_checkpoint, "--ray", "local", "--workers", "1"),
        env=segvol_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    records = out / ".segvol" / "records"
    try:
        deadline = time.monotonic() + 240
        while not (records.is_dir() and any(records.iterdir())) and process.poll() is None:
            assert time.monotonic() < deadline, "no case was recorded in time"
            time.sleep(0.05)
        ray_processes = psutil.Process(process.pid).children(recursive=True)
        process.send_signal(signal.SIGKILL)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGKILL, err.decode()
    assert ray_processes  # the cluster was running
    # Ray ties most of its processes to the driver; those that outlive it the next run stops, and says so.
    _, left = psutil.wait_procs(ray_processes, timeout=10)
    committed = {path.name: path.read_bytes() for path in records.iterdir()}

    started = []
    real_init = ray.init
    monkeypatch.setattr(ray, "init", lambda *a, **k: started.append(k) or real_init(*a, **k))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), segvol_env()["PYTHONPATH"]]))
    code, stdout, err = run_cli(batch_command([*inputs, lost], out, synthetic_checkpoint, "--ray", "local")[3:], capsys)
    assert code == 1, err
    assert started == [
        {
            "num_cpus": os.cpu_count(),
            "include_dashboard": False,
            "_node_ip_address": "127.0.0.1",
            "logging_level": "warning",
            "log_to_driver": True,
        }
    ]
    assert not ray.is_initialized()  # the run shut down the cluster it started
    assert not [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left or f"stopped {len(left)} Ray process(es) left by a killed run" in err, err
    assert {name: (records / name).read_bytes() for name in committed} == committed  # not computed again
    assert f"{len(committed)} of 4 case(s) already done" in err, err
    rows = read_rows(out / "results.csv")
    assert [(row["id"], row["status"]) for row in rows] == [
        ("case_0", "ok"),
        ("case_1", "ok"),
        ("case_2", "ok"),
        ("lost", "failed"),
    ]
    assert "its Ray worker was lost 3 times" in rows[3]["error"]
    for n in range(2):
        assert_same_segmentation(out / f"case_{n}.seg.nrrd", segment_references / f"case_{n}.seg.nrrd")


def test_the_cpu_fallback_is_recorded_in_the_case_row(tmp_path):
    """After a GPU runs out of memory every later case runs on the CPU: the row where it began says so."""

    from SegVolSlicerLib.engine import ModelChoice, SessionOptions

    write_ct(make_synthetic_ct(), tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz")
    job = dataset_jobs.SegmentJob(
        ModelChoice(), SessionOptions(), str(tmp_path / "out"), zoom_in=False, texts=("liver",)
    )
    (tmp_path / "out").mkdir()
    row = job.run_case(EngineHost(model=FullGpuSegVol()), dataset_cases.Case("ct", str(tmp_path / "ct.nii.gz")))
    assert row["status"] == "ok" and "continues on the CPU" in row["warnings"], row
