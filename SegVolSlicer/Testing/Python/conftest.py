"""Shared fixtures: the synthetic CT (per test module), synthetic SegVol weights (built and saved once per test
run), and the model stand-in every EngineHost of a test can run instead of loading weights."""

import os

import pytest


@pytest.fixture(scope="session")
def synthetic_state():
    from SegVolSlicerLib.testing.synthetic_weights import synthetic_state_dict

    return synthetic_state_dict()


@pytest.fixture(scope="session")
def synthetic_checkpoint(synthetic_state, tmp_path_factory):
    """Path of SegVol_v1.pth-style synthetic weights."""
    from SegVolSlicerLib.testing.synthetic_weights import save_checkpoint

    return save_checkpoint(synthetic_state, tmp_path_factory.mktemp("weights") / "SegVol_v1.pth", "pth")


@pytest.fixture(scope="session")
def synthetic_model(synthetic_checkpoint):
    from SegVolSlicerLib.model import load_segvol

    return load_segvol(synthetic_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def ct():
    from SegVolSlicerLib.testing.synthetic_ct import make_synthetic_ct

    return make_synthetic_ct()


@pytest.fixture(scope="module")
def space(ct):
    """The synthetic CT's model space (crop, zoom-out and window coordinates)."""
    from SegVolSlicerLib.inference.model_space import ModelSpace
    from SegVolSlicerLib.inference.preprocess import prepare_volume

    return ModelSpace(prepare_volume(ct.volume, ct.ijk_to_ras))


@pytest.fixture(scope="module")
def phantom():
    """The layout phantom (fake_segvol.layout_ct): organs placed so that the stand-in reaches every zoom-in branch."""
    from fake_segvol import layout_ct

    return layout_ct()


@pytest.fixture
def stand_in_model(monkeypatch):
    """Every EngineHost of the test runs a stand-in network (fake_segvol's) instead of loading weights:
    `stand_in_model(model)` gives every host `model` (and returns it); `stand_in_model(per_load=factory)` calls
    `factory(host)` at each load; `stand_in_model(None)` fails the test if a host loads a model at all."""
    from SegVolSlicerLib.engine import EngineHost
    from SegVolSlicerLib.reporting import NO_REPORT

    def use(model=None, *, per_load=None):
        def load(host, reporter=NO_REPORT):
            if per_load is not None:
                return per_load(host)
            if model is None:
                pytest.fail("the model must not load")
            return model

        monkeypatch.setattr(EngineHost, "model", load)
        return model

    return use


@pytest.fixture(autouse=True)
def dicom_files_are_valid(request):
    """Every SEG and synthetic CT/MR image (testing/synthetic_dicom.py) a test writes under its tmp_path passes
    dicom3tools' dciodvfy with no error and no warning (guards: a writer change that other DICOM readers
    reject or flag). Without dciodvfy installed locally this does nothing (the DICOM tests skip, saying why);
    CI requires it."""
    folder = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    import shutil

    from dicom_validators import assert_valid_dicom, written_dicom

    if folder is None or (shutil.which("dciodvfy") is None and os.environ.get("SEGVOL_REQUIRE_DCIODVFY") != "1"):
        return
    files = written_dicom(folder)
    if files:
        assert_valid_dicom(files)
