"""A dataset run's records (datasets/records.py): a case recorded done counts as done on a rerun only while
every output it recorded is there with the content it was recorded with."""

import pytest

from SegVolSlicerLib.datasets.records import Records

FINGERPRINT = "0123456789abcdef"


@pytest.fixture
def done_case(tmp_path):
    """A case committed ok with two outputs (one in a subfolder), as the runner commits it."""
    records = Records(tmp_path / "out")
    staging = records.start("case_0")
    (staging / "case_0.seg.nrrd").write_bytes(b"segmentation " * 100)
    (staging / "stats").mkdir()
    (staging / "stats" / "case_0.csv").write_bytes(b"name,volume\nliver,1.0\n")
    records.commit({"id": "case_0", "status": "ok", "fingerprint": FINGERPRINT})
    assert records.outcome("case_0", FINGERPRINT).done  # the premise: intact, it is done
    return records


@pytest.mark.parametrize("name", ["case_0.seg.nrrd", "stats/case_0.csv"])
def test_a_done_case_that_lost_an_output_is_redone(done_case, name):
    """Guards a rerun counting a case done from its record alone, or from the outputs that are still there:
    an output deleted after the case was recorded leaves the case to compute again, saying which is missing."""
    (done_case.output_dir / name).unlink()
    outcome = done_case.outcome("case_0", FINGERPRINT)
    assert not outcome.done and not outcome.other_job
    assert outcome.why == f"{name} is missing"


def test_an_output_edited_in_place_with_its_size_kept_is_redone(done_case):
    """Guards the records comparing only an output's size: the same number of other bytes is another file."""
    path = done_case.output_dir / "case_0.seg.nrrd"
    content = path.read_bytes()
    path.write_bytes(content[:10] + bytes([content[10] ^ 1]) + content[11:])
    assert path.stat().st_size == len(content)
    outcome = done_case.outcome("case_0", FINGERPRINT)
    assert not outcome.done and "case_0.seg.nrrd changed" in outcome.why


def test_a_truncated_output_is_redone_and_an_intact_case_of_another_job_is_not_done(done_case):
    path = done_case.output_dir / "stats" / "case_0.csv"
    path.write_bytes(path.read_bytes()[:-3])
    assert not done_case.outcome("case_0", FINGERPRINT).done
    other = done_case.outcome("case_0", "fedcba9876543210")
    assert not other.done and other.other_job


def test_a_failed_case_is_never_done_and_records_no_outputs(tmp_path):
    records = Records(tmp_path / "out")
    records.start("case_1")
    record = records.commit({"id": "case_1", "status": "error", "error": "corrupt", "fingerprint": FINGERPRINT})
    assert record["outputs"] == {}
    assert not records.outcome("case_1", FINGERPRINT).done


def test_commit_records_the_staged_outputs_only_and_leaves_no_staging(tmp_path):
    """Guards a half-written temporary file (a dot-name, as atomic writes leave them) recorded as an output,
    an output two folders deep failing to move onto its final name, and the staging folder left behind."""
    records = Records(tmp_path / "out")
    staging = records.start("case_2")
    (staging / "deep" / "er").mkdir(parents=True)
    (staging / "deep" / "er" / "case_2.csv").write_bytes(b"a,b\n")
    (staging / ".case_2.csv.tmp").write_bytes(b"partial")
    record = records.commit({"id": "case_2", "status": "ok", "fingerprint": FINGERPRINT})
    assert list(record["outputs"]) == ["deep/er/case_2.csv"]
    assert (records.output_dir / "deep" / "er" / "case_2.csv").read_bytes() == b"a,b\n"
    assert not records.staging_dir("case_2").exists()
    assert records.outcome("case_2", FINGERPRINT).done
