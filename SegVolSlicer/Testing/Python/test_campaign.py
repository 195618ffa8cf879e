"""Annotation campaigns without Slicer (SegVolSlicerLib.campaign): the queue resumes where it stopped, two
annotators never open the same case and never overwrite each other, an interrupted accept leaves the previous
label, an input label is replaced only when asked, the export is a valid nnU-Net v2 raw dataset, and the
recorded prompts replay to the accepted mask bit for bit with the same weights."""

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from cli_helpers import run_cli, segvol_env
from fake_segvol import FakeSegVol

from SegVolSlicerLib.campaign import locks as campaign_locks
from SegVolSlicerLib.campaign.campaign import Campaign, InputLabelExists
from SegVolSlicerLib.campaign.export import check_nnunet_dataset, export_nnunet
from SegVolSlicerLib.campaign.records import CORRECTION, OFFICIAL, record_path, target_from_json, target_to_json
from SegVolSlicerLib.campaign.state import FLAGGED, IN_PROGRESS, NEW, SKIPPED
from SegVolSlicerLib.engine import EngineHost, TargetJob, VolumeInput
from SegVolSlicerLib.errors import InputError
from SegVolSlicerLib.files import file_sha256
from SegVolSlicerLib.imageio import Segment, read_ct, read_segmentation
from SegVolSlicerLib.prompts import Box, Points, Target
from SegVolSlicerLib.testing.synthetic_ct import SyntheticCT, make_synthetic_ct, write_ct


def small_ct(ct, shift: int) -> SyntheticCT:
    """A 12 x 40 x 48 voxel CT cut from the synthetic one, `3 * shift` slices up (the cases differ)."""
    cut = np.s_[3 * shift : 3 * shift + 36 : 3, ::4, ::4]
    first = np.eye(4)
    first[2, 3] = 3 * shift
    ijk_to_ras = ct.ijk_to_ras @ first @ np.diag([4.0, 4.0, 3.0, 1.0])
    return SyntheticCT(np.ascontiguousarray(ct.volume[cut]), np.ascontiguousarray(ct.labels[cut]), ijk_to_ras)


@pytest.fixture(scope="module")
def small_cts():
    ct = make_synthetic_ct()
    return [small_ct(ct, n) for n in range(3)]


@pytest.fixture
def ct_folder(tmp_path, small_cts):
    folder = tmp_path / "cts"
    folder.mkdir()
    for n, ct in enumerate(small_cts):
        write_ct(ct, folder / f"case{n}.nii.gz")
    return folder


@pytest.fixture
def nnunet_folder(tmp_path, small_cts):
    """Dataset502_Liver: three CTs, case0 with the label map it came with."""
    folder = tmp_path / "Dataset502_Liver"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for n, ct in enumerate(small_cts):
        write_ct(
            ct, folder / "imagesTr" / f"case{n}_0000.nii.gz", folder / "labelsTr" / "case0.nii.gz" if n == 0 else None
        )
    description = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "spleen": 2},
                   "numTraining": 1, "file_ending": ".nii.gz"}  # fmt: skip
    (folder / "dataset.json").write_text(json.dumps(description))
    return folder


@pytest.fixture
def host():
    return EngineHost(model=FakeSegVol())


def annotate(case, host):
    """What an annotator does in the panel: "liver" (official), then a click correcting it locally; returns the
    segments to accept and the CT."""
    loaded = case.load()
    volume = VolumeInput(case.case.id, loaded.volume.array, loaded.volume.ijk_to_ras)
    text = Target("liver", text="liver")
    (liver,) = host.segment(volume, [TargetJob(text, result_key="liver")])
    case.record_step(OFFICIAL, [text], zoom_in=True, sources=["text"])
    centre = np.argwhere(liver.mask).mean(axis=0)[::-1]  # (i, j, k) of the segment's middle
    click = Target("liver", "liver", Points(centre[None], [1]))
    (liver,) = host.segment(volume, [TargetJob(click, result_key="liver", correct=True)])
    assert not liver.warnings, "the click was no local correction: the record would not test one"
    case.record_step(CORRECTION, [click], zoom_in=True, sources=["points"])
    return [Segment.for_target("liver", "liver", liver.mask)], loaded.volume


def test_a_folder_campaign_resumes_where_it_stopped(ct_folder, host):
    campaign = Campaign.open(ct_folder, "ann")
    first = campaign.next_case()
    segments, volume = annotate(first, host)
    label = first.accept(segments, volume, weights="SegVol_v1.pth")
    assert label == ct_folder / "reviewed" / f"{first.case.id}.seg.nrrd"
    (written,) = read_segmentation(label, volume)
    np.testing.assert_array_equal(written.mask, segments[0].mask)
    record = json.loads(record_path(label).read_text())
    assert [s["mode"] for s in record["steps"]] == [OFFICIAL, CORRECTION]
    assert record["annotator"] == "ann" and record["segvol"]["weights"] == "SegVol_v1.pth"
    assert record["segments"][0]["name"] == "liver" and record["label_sha256"]

    second = campaign.open_case("case2")  # the last one in id order: resuming must bring it back first
    segments, _ = annotate(second, host)
    second.close()  # Slicer closed mid-case: the case stays in progress with its steps

    again = Campaign.open(ct_folder, "ann")
    progress = again.progress()
    assert progress.summary == "1 of 3 accepted (1 in progress)"
    assert again.state(second.case.id).status == IN_PROGRESS
    resumed = again.next_case()
    assert resumed.case.id == second.case.id, "an annotator's case in progress did not come back first"
    assert len(resumed.work["steps"]) == 2, "the steps before closing were lost"
    assert again.next_case(after=resumed.case.id).case.id not in (first.case.id, second.case.id)


def test_flag_and_skip_move_on_and_show_in_the_progress(ct_folder):
    campaign = Campaign.open(ct_folder, "ann")
    case = campaign.next_case(order="id")
    case.flag("liver cut off at the top")
    skipped = campaign.next_case(order="id")
    skipped.skip()
    progress = campaign.progress()
    assert progress.flagged == [(case.case.id, "ann", "liver cut off at the top")]
    assert progress.counts[SKIPPED] == 1 and progress.counts[NEW] == 1
    third = campaign.next_case(order="id")
    assert third.case.id not in (case.case.id, skipped.case.id), "the skipped case came back before a new one"
    third.close()
    assert campaign.next_case(order="id", after=third.case.id).case.id == skipped.case.id
    assert campaign.state(case.case.id).status == FLAGGED


SECOND_ANNOTATOR = """
import json, sys
from SegVolSlicerLib.campaign.campaign import Campaign
from SegVolSlicerLib.errors import InputError
from SegVolSlicerLib.files import file_sha256
campaign = Campaign.open(sys.argv[1], "bea")
case = campaign.next_case(order="id")
try:
    campaign.open_case(sys.argv[2])
    refused = None
except InputError as error:  # CaseLocked, or no such case
    refused = str(error)
print(json.dumps({"next": case.case.id, "refused": refused, "message": case.message}))
case.close()
"""


def second_annotator(folder, case_id):
    done = subprocess.run(
        [sys.executable, "-c", SECOND_ANNOTATOR, str(folder), case_id], capture_output=True, text=True,
        env=segvol_env(), timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_second_annotator_never_opens_the_same_case(ct_folder):
    campaign = Campaign.open(ct_folder, "ann")
    mine = campaign.next_case(order="id")
    other = second_annotator(ct_folder, mine.case.id)
    assert other["next"] != mine.case.id, "the second annotator was given an open case"
    assert other["refused"] and "ann" in other["refused"]
    assert campaign.state(other["next"]).annotator == "bea"
    mine.heartbeat()  # still ours


def test_a_stale_lock_is_taken_over_and_its_holder_writes_nothing(ct_folder, host):
    campaign = Campaign.open(ct_folder, "ann")
    mine = campaign.next_case(order="id")
    segments, volume = annotate(mine, host)
    lock = json.loads(mine.lock.path.read_text())
    lock["heartbeat"] -= campaign_locks.STALE_AFTER_S + 1  # ann's Slicer froze: no heartbeat since
    mine.lock.path.write_text(json.dumps(lock))
    other = second_annotator(ct_folder, "no such case")  # bea takes the stale case, the first in id order
    assert other["next"] == mine.case.id and "taken over" in other["message"] and "ann" in other["message"]
    with pytest.raises(campaign_locks.LockLost):
        mine.accept(segments, volume)
    assert not campaign.source.label_path(mine.case.id).exists(), "a taken-over annotator wrote a label"


def test_an_interrupted_accept_leaves_the_previous_label(ct_folder, host, monkeypatch):
    campaign = Campaign.open(ct_folder, "ann")
    case = campaign.next_case()
    segments, volume = annotate(case, host)
    label = case.accept(segments, volume)
    before, record_before = label.read_bytes(), record_path(label).read_bytes()

    again = campaign.open_case(case.case.id)
    empty = [Segment.for_target("liver", "liver", np.zeros_like(segments[0].mask))]
    written = sitk.WriteImage

    def crash_halfway(image, path, *args, **kwargs):  # the process dies with half the file written
        written(image, path, *args, **kwargs)
        Path(path).write_bytes(Path(path).read_bytes()[: os.path.getsize(path) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(sitk, "WriteImage", crash_halfway)
    with pytest.raises(KeyboardInterrupt):
        again.accept(empty, volume)
    assert label.read_bytes() == before and record_path(label).read_bytes() == record_before
    assert sorted(p.name for p in label.parent.iterdir()) == [label.name, record_path(label).name]
    assert campaign.state(case.case.id).status == IN_PROGRESS, "an interrupted accept counted as accepted"


def test_an_input_label_is_replaced_only_when_asked(nnunet_folder, host, small_cts):
    campaign = Campaign.open(nnunet_folder, "ann")
    assert [c.id for c in campaign.source.cases] == ["case0", "case1", "case2"]
    case = campaign.open_case("case0")
    loaded = case.load()
    names = [s.name for s in loaded.segments]
    assert names[:2] == ["liver", "spleen"] and "label 3" in names, "the dataset's class names were not used"
    label = nnunet_folder / "labelsTr" / "case0.nii.gz"
    original = label.read_bytes()
    segments = [s for s in loaded.segments if s.name in ("liver", "spleen")]
    with pytest.raises(InputLabelExists):
        case.accept(segments, loaded.volume)
    assert label.read_bytes() == original
    case.accept(segments, loaded.volume, replace_input=True)
    assert (campaign.state_dir / "originals" / "case0.nii.gz").read_bytes() == original
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(label)))
    expected = np.where(np.isin(small_cts[0].labels, (1, 2)), small_cts[0].labels, 0)
    np.testing.assert_array_equal(written, expected)

    second = campaign.open_case("case0")  # its own label now: replaced without asking
    second.accept(segments[:1], loaded.volume)
    with pytest.raises(InputError, match="not classes of the dataset"):
        campaign.open_case("case1").accept([Segment.for_target("kidney", None, segments[0].mask)], loaded.volume)


def test_export_is_a_valid_nnunet_v2_dataset(ct_folder, host, tmp_path):
    campaign = Campaign.open(ct_folder, "ann")
    for _ in range(2):
        case = campaign.next_case(order="id")
        segments, volume = annotate(case, host)
        spleen = Segment.for_target("spleen", "spleen", np.roll(segments[0].mask, 3, axis=2))
        case.accept([*segments, spleen], volume)
    out = tmp_path / "Dataset501_Campaign"
    export = export_nnunet(campaign, out)
    assert export.cases == ["case0", "case1"] and export.classes == [("liver", 1), ("spleen", 2)]
    assert check_nnunet_dataset(out) == []
    description = json.loads((out / "dataset.json").read_text())
    assert description["labels"] == {"background": 0, "liver": 1, "spleen": 2} and description["numTraining"] == 2
    label = sitk.ReadImage(str(out / "labelsTr" / "case0.nii.gz"))
    image = sitk.ReadImage(str(out / "imagesTr" / "case0_0000.nii.gz"))
    assert label.GetOrigin() == image.GetOrigin() and label.GetSize() == image.GetSize()

    with pytest.raises(InputError, match="DatasetNNN_Name"):
        export_nnunet(campaign, tmp_path / "my export")
    with pytest.raises(InputError, match="not empty"):
        export_nnunet(campaign, out)


NNUNET_VERIFIER = os.environ.get("SEGVOL_NNUNET_VERIFIER")  # nnU-Net's own checker (.ci/run installs it)
VERIFY = """
import os, sys
sys.path.append(sys.argv[1])
for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
    os.environ.setdefault(name, sys.argv[2])
from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
if __name__ == "__main__":
    verify_dataset_integrity(sys.argv[2], num_processes=1)
"""


def nnunet_verdict(folder):
    done = subprocess.run(
        [sys.executable, "-c", VERIFY, NNUNET_VERIFIER, str(folder)], capture_output=True, text=True, timeout=300
    )
    return done.returncode, done.stdout + done.stderr


@pytest.mark.skipif(not NNUNET_VERIFIER, reason="set SEGVOL_NNUNET_VERIFIER to nnU-Net's checker (.ci/run does)")
def test_nnunet_itself_accepts_the_export(ct_folder, host, tmp_path):
    """nnU-Net v2's verify_dataset_integrity (its own reader) on the export, and on a label it must refuse."""
    campaign = Campaign.open(ct_folder, "ann")
    for _ in range(2):
        case = campaign.next_case(order="id")
        case.accept(*annotate(case, host))
    out = tmp_path / "Dataset504_Verified"
    export_nnunet(campaign, out)
    code, output = nnunet_verdict(out)
    assert code == 0, output
    label = out / "labelsTr" / "case1.nii.gz"
    image = sitk.ReadImage(str(label))
    array = sitk.GetArrayFromImage(image)
    array[0, 0, 0] = 7
    wrong = sitk.GetImageFromArray(array)
    wrong.CopyInformation(image)
    sitk.WriteImage(wrong, str(label))
    code, output = nnunet_verdict(out)
    assert code != 0 and "unexpected labels" in output, "nnU-Net's checker accepted a wrong label: it checks nothing"


def broken(folder, change):
    change(folder)
    return check_nnunet_dataset(folder)


def test_the_nnunet_check_names_each_broken_rule(ct_folder, host, tmp_path):
    campaign = Campaign.open(ct_folder, "ann")
    case = campaign.next_case(order="id")
    case.accept(*annotate(case, host))
    out = tmp_path / "Dataset503_Check"
    export_nnunet(campaign, out)

    def edit_json(**changes):
        def change(folder):
            path = folder / "dataset.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

        return change

    def label_value(folder):
        path = folder / "labelsTr" / "case0.nii.gz"
        image = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(image)
        array[0, 0, 0] = 7
        moved = sitk.GetImageFromArray(array)
        moved.CopyInformation(image)
        sitk.WriteImage(moved, str(path))

    cases = {
        "consecutive": edit_json(labels={"background": 0, "liver": 2}),
        "numTraining": edit_json(numTraining=3),
        "values [7]": label_value,
        "is missing": lambda f: (f / "imagesTr" / "case0_0000.nii.gz").rename(f / "case0_0000.nii.gz"),
    }
    for words, change in cases.items():
        copy = tmp_path / "copies" / f"Dataset{len(words):03d}_Copy"
        copy.parent.mkdir(exist_ok=True)
        subprocess.run(["cp", "-r", str(out), str(copy)], check=True)
        problems = broken(copy, change)
        assert any(words in p for p in problems), (words, problems)


@pytest.fixture
def fake_weights(tmp_path, stand_in_model):
    """A weights file to hash (the job's fingerprint); the stand-in model runs."""
    path = tmp_path / "SegVol_v1.pth"
    torch.save({"stand-in": torch.zeros(1)}, path)
    stand_in_model(FakeSegVol())
    return path


def test_replayed_prompts_give_the_accepted_mask_bit_for_bit(ct_folder, host, fake_weights, tmp_path, capsys):
    campaign = Campaign.open(ct_folder, "ann")
    accepted = {}
    for _ in range(2):
        case = campaign.next_case(order="id")
        segments, volume = annotate(case, host)
        accepted[case.case.id] = segments[0].mask
        label = case.accept(segments, volume, weights=str(fake_weights))
        identity = json.loads(record_path(label).read_text())["segvol"]
        assert identity["weights"] == "SegVol_v1.pth" and identity["weights_sha256"] == file_sha256(fake_weights)
    out = tmp_path / "replay"
    code, stdout, stderr = run_cli(
        ["campaign", "replay", ct_folder, "--output-dir", out, "--checkpoint", fake_weights, "--device", "cpu"], capsys
    )
    assert code == 0, stderr
    assert "liver: Dice" in stdout and "2 case(s) done" in stdout
    for case in campaign.source.cases[:2]:
        (replayed,) = read_segmentation(out / "cases" / case.id / f"{case.id}.seg.nrrd", read_ct(case.image))
        np.testing.assert_array_equal(replayed.mask, accepted[case.id], err_msg=f"{case.id} replayed to another mask")
    with open(out / "metrics.csv", newline="") as file:
        metrics = list(csv.DictReader(file))
    assert [(m["case"], m["class"], m["prompt"]) for m in metrics] == [(c, "liver", "replay") for c in accepted]
    assert (out / "summary.csv").is_file() and (out / "dice.png").is_file()
    code, stdout, _ = run_cli(["campaign", "replay", ct_folder, "--output-dir", out, "--checkpoint", fake_weights],
                              capsys)  # fmt: skip
    assert code == 0 and "2 skipped" in stdout, "a rerun of the same replay computed the cases again"
    code, _, stderr = run_cli(["campaign", "replay", ct_folder, "--output-dir", ct_folder / "replay"], capsys)
    assert code == 2 and "inside the campaign folder" in stderr


def test_status_and_export_commands(ct_folder, host, tmp_path, capsys):
    campaign = Campaign.open(ct_folder, "ann")
    case = campaign.next_case(order="id")
    case.accept(*annotate(case, host))
    campaign.next_case(order="id").flag("motion artefacts")
    campaign.next_case(order="id")  # left open
    code, stdout, _ = run_cli(["campaign", "status", ct_folder], capsys)
    assert code == 0
    assert "1 of 3 accepted (1 flagged, 1 in progress)" in stdout and "accepted by ann: 1" in stdout
    assert "flagged: case1 (ann): motion artefacts" in stdout and "in progress: case2 (ann, open by ann)" in stdout
    out = tmp_path / "Dataset510_Cli"
    code, stdout, stderr = run_cli(["campaign", "export", ct_folder, "--nnunet", out], capsys)
    assert code == 0, stderr
    assert "1 case(s) written" in stdout and check_nnunet_dataset(out) == []


def test_a_lock_being_written_is_not_taken(ct_folder):
    """A lock file that exists but is still empty (its maker is writing it) belongs to its maker."""
    campaign = Campaign.open(ct_folder, "ann")
    locks = campaign.locks
    locks.folder.mkdir(parents=True, exist_ok=True)
    locks.path("case0").write_text("")
    with pytest.raises(campaign_locks.CaseLocked, match="being opened"):
        locks.acquire("case0", "bea")
    os.utime(locks.path("case0"), (time.time() - 2 * campaign_locks.STALE_AFTER_S,) * 2)
    lock, message = locks.acquire("case0", "bea")
    assert "taken over" in message and locks.holder("case0")["owner"] == "bea"


def test_recorded_prompts_keep_every_float():
    """A record that rounded the clicks (float32, fixed decimals) would replay other prompts."""
    target = Target("liver", "liver", Points([[12.345678901234567, 0.1 + 0.2, 1e-17]], [1]), Box((1, 2, 3), (4, 5, 6)))
    again = target_from_json(json.loads(json.dumps(target_to_json(target))))
    assert again.points.ijk.tobytes() == target.points.ijk.tobytes()
    assert (again.name, again.text, again.box, again.points.labels.tolist()) == ("liver", "liver", target.box, [1])


def test_a_batch_output_opens_lowest_confidence_first(ct_folder, fake_weights, tmp_path, capsys):
    out = tmp_path / "batch"
    argv = ["batch", ct_folder, "--text", "liver", "--text", "spleen", "--output-dir", out, "--checkpoint"]
    code, _, stderr = run_cli([*argv, fake_weights, "--device", "cpu"], capsys)
    assert code == 0, stderr
    campaign = Campaign.open(out, "ann")
    assert campaign.source.kind == "batch"
    lowest = {case.id: case.confidence for case in campaign.source.cases}
    assert all(value is not None for value in lowest.values()), "the batch statistics' confidence was not read"
    with open(out / "stats.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    for case_id, value in lowest.items():
        assert value == min(float(r["mean_probability"]) for r in rows if r["case"] == case_id)
    order = [case.id for case in campaign.ordered_cases()]
    assert order == sorted(lowest, key=lambda case_id: (lowest[case_id], case_id))
    case = campaign.next_case()
    assert case.case.id == order[0]
    loaded = case.load()
    assert [s.name for s in loaded.segments] == ["liver", "spleen"] and loaded.result.endswith(".seg.nrrd")
    assert set(case.work["confidence_before"]) == {"liver", "spleen"}, "the batch's confidence was not kept"
    label = case.accept(loaded.segments, loaded.volume)
    assert label == out / "reviewed" / f"{case.case.id}.seg.nrrd"
    before = json.loads(record_path(label).read_text())["segments"][0]["confidence_before"]
    assert before["mean_probability"] == pytest.approx(
        float(rows[[r["case"] for r in rows].index(case.case.id)]["mean_probability"]), abs=1e-4
    )


def test_a_csv_manifest_campaign_lives_beside_it(ct_folder, tmp_path, host):
    manifest = tmp_path / "cases.csv"
    manifest.write_text("id,image\nfirst,cts/case1.nii.gz\nsecond,cts/case2.nii.gz\n")
    campaign = Campaign.open(manifest, "ann")
    assert [c.id for c in campaign.source.cases] == ["first", "second"]
    case = campaign.next_case(order="id")
    label = case.accept(*annotate(case, host))
    assert label == tmp_path / "reviewed" / "first.seg.nrrd"
    assert Campaign.open(tmp_path).progress().summary == "1 of 2 accepted", "the campaign folder did not reopen"


def test_next_case_passes_over_a_case_opened_meanwhile(ct_folder, monkeypatch):
    """Between Next's look at the locks and its own lock, another annotator may open the same case."""
    campaign = Campaign.open(ct_folder, "ann")
    Campaign.open(ct_folder, "bea").open_case("case0")
    monkeypatch.setattr(campaign.locks, "holder", lambda case_id: None)  # the look saw no lock
    assert campaign.next_case(order="id").case.id == "case1"


def test_campaign_commands_refuse_what_is_no_campaign(tmp_path, capsys):
    code, _, stderr = run_cli(["campaign", "status", tmp_path / "missing"], capsys)
    assert code == 2 and "does not exist" in stderr and "Traceback" not in stderr
    (tmp_path / "empty").mkdir()
    code, _, stderr = run_cli(["campaign", "export", tmp_path / "empty", "--nnunet", tmp_path / "Dataset1_X"], capsys)
    assert code == 2 and "segvol: error:" in stderr
