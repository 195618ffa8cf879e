"""The panel's Dataset section on real MRML with the panel stand-ins: a campaign of synthetic CTs opened, each
case loaded on the worker and shown, segmented by name (one recorded AI step), edited by hand (counted),
accepted; Next asks before leaving changes; flag and skip; the case in progress comes back after the module was
closed; the panel's record replays to the accepted mask bit for bit with the same weights."""

import json

import numpy as np
import pytest
import slicer
from fake_segvol import FakeSegVol
from slicer_app_standins import emit
from slicer_core_env import slicer_module, slicer_scene  # noqa: F401  (fixtures)
from test_slicer_widget import panel  # noqa: F401  (fixture)

from SegVolSlicerLib.campaign.campaign import Campaign
from SegVolSlicerLib.campaign.records import OFFICIAL, record_path
from SegVolSlicerLib.campaign.replay import replay_steps
from SegVolSlicerLib.engine import EngineHost, SessionOptions, VolumeInput
from SegVolSlicerLib.imageio import read_ct, read_segmentation
from SegVolSlicerLib.reporting import NO_REPORT
from SegVolSlicerLib.testing.synthetic_ct import SyntheticCT, make_synthetic_ct, write_ct


@pytest.fixture(scope="module")
def cts():
    ct = make_synthetic_ct()
    cut = np.s_[::4, ::4, ::4]  # 12 x 40 x 48 voxels: three cases that differ by their noise only
    ijk_to_ras = ct.ijk_to_ras @ np.diag([4.0, 4.0, 4.0, 1.0])
    return [
        SyntheticCT(np.ascontiguousarray(make_synthetic_ct(seed).volume[cut]), ct.labels[cut], ijk_to_ras)
        for seed in range(3)
    ]


@pytest.fixture
def campaign_folder(tmp_path, cts):
    for number, ct in enumerate(cts):
        write_ct(ct, tmp_path / f"case{number}.nii.gz")
    return tmp_path


@pytest.fixture
def dataset(panel, campaign_folder, monkeypatch):  # noqa: F811
    """(widget, section, parameters, answers): the panel with the campaign opened by "ann"; `answers`: what the
    user answers to the next yes/no questions (each asked question is appended to `answers["asked"]`)."""
    widget, parameters, _ = panel
    widget.onClearPrompts()  # the panel fixture's click is not part of these cases
    parameters.positivePoints.RemoveAllControlPoints()
    slicer.mrmlScene.RemoveNode(parameters.inputVolume)
    answers = {"replies": [], "asked": []}

    def confirm(text, **kwargs):
        answers["asked"].append(text)
        return answers["replies"].pop(0)

    monkeypatch.setattr(slicer.util, "confirmYesNoDisplay", confirm, raising=False)
    section = widget.campaign
    section.annotatorEdit.text = "ann"
    emit(section.annotatorEdit, "editingFinished()")
    section.sourcePathEdit.currentPath = str(campaign_folder)
    emit(section.openCampaignButton, "clicked(bool)")
    return widget, section, parameters, answers


def segment_by_name(widget, parameters, names):
    parameters.targetNames = names
    widget.runSegmentation(interactive=True)
    assert not widget.jobs.running


def test_next_segment_edit_accept(dataset):
    widget, section, parameters, answers = dataset
    assert section.progressLabel.text == "0 of 3 accepted"
    emit(section.nextCaseButton, "clicked(bool)")
    case = section.case
    assert case is not None and case.case.id == "case0"
    volume, segmentation = section.nodes
    assert parameters.inputVolume is volume and parameters.outputSegmentation is segmentation
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), read_ct(case.case.image).array)

    segment_by_name(widget, parameters, "liver")
    assert [s["mode"] for s in case.work["steps"]] == [OFFICIAL]
    assert case.work["steps"][0]["targets"][0]["text"] == "liver" and case.work["steps"][0]["sources"] == ["text"]
    assert case.work["hand_edits"] == {}, "SegVol's own write counted as a hand edit"
    liver_id = segmentation.GetSegmentation().GetSegmentIdBySegmentName("liver")
    edited = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, liver_id, volume).astype(np.uint8)
    edited[0, :4, :4] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(edited, segmentation, liver_id, volume)
    assert case.work["hand_edits"] == {"liver": 1}

    answers["replies"].append(False)
    emit(section.nextCaseButton, "clicked(bool)")
    assert answers["asked"] and section.case is case, "Next left a case with changes without asking"

    emit(section.acceptButton, "clicked(bool)")
    label = section.campaign.source.label_path("case0")
    (accepted,) = read_segmentation(label, read_ct(case.case.image))
    np.testing.assert_array_equal(accepted.mask, edited)
    record = json.loads(record_path(label).read_text())
    assert record["annotator"] == "ann" and record["hand_edits"] == {"liver": 1} and len(record["steps"]) == 1
    assert section.progressLabel.text == "1 of 3 accepted" and "case0" in section.casesLabel.text

    asked = len(answers["asked"])
    emit(section.nextCaseButton, "clicked(bool)")  # nothing unsaved: no question
    assert len(answers["asked"]) == asked and section.case.case.id == "case1"
    assert volume.GetScene() is None and segmentation.GetScene() is None, "the accepted case's nodes stayed"


def test_flag_skip_and_resume_after_closing(dataset):
    widget, section, parameters, answers = dataset
    emit(section.nextCaseButton, "clicked(bool)")
    emit(section.flagButton, "clicked(bool)")
    assert section.case.case.id == "case0", "a flag without a comment was taken"
    section.commentEdit.text = "metal artefacts"
    emit(section.flagButton, "clicked(bool)")
    assert section.case.case.id == "case1"
    emit(section.skipButton, "clicked(bool)")
    assert section.case.case.id == "case2"
    segment_by_name(widget, parameters, "spleen")
    progress = section.campaign.progress()
    assert progress.flagged == [("case0", "ann", "metal artefacts")] and progress.counts["skipped"] == 1

    section.cleanup()  # the module is closed (Widget.cleanup) with case2 open: it stays in progress, its step kept
    again = Campaign.open(section.campaign.source.folder, "ann")
    assert again.state("case2").status == "in progress" and again.locks.holder("case2") is None
    resumed = again.next_case()
    assert resumed.case.id == "case2" and len(resumed.work["steps"]) == 1


def test_the_panel_record_replays_bit_for_bit(dataset):
    widget, section, parameters, answers = dataset
    parameters.zoomIn = True
    parameters.targetNames = "liver, spleen"
    section.runNamesCheckBox.checked = True  # a case without a result is segmented as it opens
    emit(section.nextCaseButton, "clicked(bool)")
    case = section.case
    assert [t["name"] for t in case.work["steps"][0]["targets"]] == ["liver", "spleen"], "the names did not run"
    emit(section.acceptButton, "clicked(bool)")
    label = section.campaign.source.label_path(case.case.id)
    record = json.loads(record_path(label).read_text())
    ct = read_ct(case.case.image)
    host = EngineHost(model=FakeSegVol(), session_options=SessionOptions())
    latest, warnings = replay_steps(host, VolumeInput("replay", ct.array, ct.ijk_to_ras), record["steps"], NO_REPORT)
    accepted = {s.name: s.mask for s in read_segmentation(label, ct)}
    assert sorted(latest) == ["liver", "spleen"] and not warnings
    for name, result in latest.items():
        np.testing.assert_array_equal(result.mask, accepted[name], err_msg=f"{name} replayed to another mask")


def test_closing_the_scene_leaves_the_case_in_progress_and_unlocked(dataset):
    widget, section, parameters, answers = dataset
    emit(section.nextCaseButton, "clicked(bool)")
    case = section.case
    segment_by_name(widget, parameters, "liver")
    assert section.campaign.locks.holder(case.case.id)["owner"] == "ann"
    slicer.mrmlScene.Clear(False)
    assert section.case is None and section.campaign.locks.holder(case.case.id) is None
    assert section.campaign.state(case.case.id).status == "in progress"
    assert len(Campaign.open(section.campaign.source.folder, "ann").next_case().work["steps"]) == 1


def test_an_input_label_is_shown_with_its_names_and_replaced_only_when_confirmed(dataset, cts, tmp_path):
    widget, section, parameters, answers = dataset
    folder = tmp_path / "Dataset505_Input"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    write_ct(cts[0], folder / "imagesTr" / "ct_0000.nii.gz", folder / "labelsTr" / "ct.nii.gz")
    description = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "spleen": 2},
                   "numTraining": 1, "file_ending": ".nii.gz"}  # fmt: skip
    (folder / "dataset.json").write_text(json.dumps(description))
    original = (folder / "labelsTr" / "ct.nii.gz").read_bytes()
    section.sourcePathEdit.currentPath = str(folder)
    emit(section.openCampaignButton, "clicked(bool)")
    emit(section.nextCaseButton, "clicked(bool)")
    volume, segmentation = section.nodes
    segments = segmentation.GetSegmentation()
    names = [segments.GetNthSegment(n).GetName() for n in range(segments.GetNumberOfSegments())]
    assert names[:2] == ["liver", "spleen"], names
    for name in names[2:]:  # the dataset's other label values have no class: not part of the label
        segments.RemoveSegment(segments.GetSegmentIdBySegmentName(name))
    answers["replies"].append(False)
    emit(section.acceptButton, "clicked(bool)")
    assert "dataset came with" in answers["asked"][-1]
    assert (folder / "labelsTr" / "ct.nii.gz").read_bytes() == original, "an input label was replaced unasked"
    answers["replies"].append(True)
    emit(section.acceptButton, "clicked(bool)")
    assert section.campaign.state("ct").status == "accepted"
    assert (folder / ".segvol-campaign" / "originals" / "ct.nii.gz").read_bytes() == original
