"""Loading SegVol weights: the three official formats, strict keys, and files that must be refused."""

import argparse
import os
import shutil

import numpy as np
import pytest
import torch

from SegVolSlicerLib.errors import CheckpointError, InputError
from SegVolSlicerLib.model import load_segvol
from SegVolSlicerLib.model.checkpoint import load_state_strict, read_state_dict
from SegVolSlicerLib.runtime import resolve_device
from SegVolSlicerLib.testing.synthetic_weights import official_key_shapes, save_checkpoint, synthetic_tensor


def _assert_same_weights(model, reference):
    expected = reference.state_dict()
    actual = model.state_dict()
    assert actual.keys() == expected.keys()
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key


def test_synthetic_weights_cover_the_official_layout(synthetic_state):
    shapes = official_key_shapes()
    assert len(shapes) == 475
    assert sum(torch.Size(s).numel() for k, s in shapes.items() if not k.endswith("position_ids")) == 180_891_216
    assert synthetic_state.keys() == shapes.keys()
    # A pure function of the key: the same tensor whatever else is generated.
    key = "mask_decoder.txt_align_upscaled_embedding.weight"
    assert torch.equal(synthetic_tensor(key, shapes[key]), synthetic_state[key])


def test_pth_loads_every_tensor(synthetic_model, synthetic_state):
    ours = synthetic_model.state_dict()
    for key, value in synthetic_state.items():
        if "mask_downscaling" in key or key.endswith("position_ids"):
            continue
        ours_key = key.replace("clip_text_model.text_model.", "clip_text_model.")
        assert torch.equal(ours[ours_key], value), key
    gaussian = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
    assert torch.equal(ours[gaussian], synthetic_state[gaussian])  # loaded, never re-drawn


@pytest.mark.parametrize(
    "fmt, name", [("bin", "pytorch_model.bin"), ("safetensors", "model.safetensors"), ("hf-folder", "snapshot")]
)
def test_hugging_face_formats_load_the_same_weights(fmt, name, synthetic_state, synthetic_model, tmp_path):
    path = save_checkpoint(synthetic_state, tmp_path / name, fmt)
    model = load_segvol(path, device="cpu")
    _assert_same_weights(model, synthetic_model)
    if fmt == "hf-folder":  # the snapshot's own tokenizer is used
        assert os.path.samefile(model.text_encoder.tokenizer.name_or_path, path)
    # 724 MB each, and pytest keeps the tmp folders of past runs
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def test_training_checkpoint_with_numpy_and_args_loads(synthetic_state, tmp_path):
    """SegVol_v1.pth is a training checkpoint: plain-data extras next to 'model' must not block loading."""
    path = tmp_path / "SegVol_v1.pth"
    torch.save(
        {
            "model": {"module." + k: v for k, v in synthetic_state.items()},
            "epoch": np.int64(2000),
            "args": argparse.Namespace(lr=1e-4, spatial_size=(32, 256, 256)),
            "history": np.zeros(3),
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
        },
        path,
    )
    state = read_state_dict(path)
    assert torch.equal(state["mask_decoder.iou_token.weight"], synthetic_state["mask_decoder.iou_token.weight"])


def test_missing_and_unexpected_keys_are_named(synthetic_model, synthetic_checkpoint):
    state = read_state_dict(synthetic_checkpoint)
    del state["mask_decoder.iou_token.weight"]
    state["mask_decoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(
        CheckpointError,
        match=r"missing 1 key\(s\): mask_decoder.iou_token.weight.*"
        r"unexpected 1 key\(s\): mask_decoder.extra.weight",
    ):
        load_state_strict(synthetic_model, state, synthetic_checkpoint)


def test_wrong_shapes_are_named(synthetic_model, synthetic_checkpoint):
    state = read_state_dict(synthetic_checkpoint)
    state["mask_decoder.iou_token.weight"] = torch.zeros(2, 768)
    with pytest.raises(CheckpointError, match=r"wrong shape .* mask_decoder.iou_token.weight \(2, 768\)"):
        load_state_strict(synthetic_model, state, synthetic_checkpoint)


def test_only_position_ids_and_mask_downscaling_are_optional(synthetic_model, synthetic_checkpoint):
    state = read_state_dict(synthetic_checkpoint)
    assert "text_encoder.clip_text_model.embeddings.position_ids" in state
    assert sum(key.startswith("prompt_encoder.mask_downscaling.") for key in state) == 10
    trimmed = {
        key: value for key, value in state.items() if "mask_downscaling" not in key and not key.endswith("position_ids")
    }
    load_state_strict(synthetic_model, trimmed, synthetic_checkpoint)  # same weights: the model is unchanged


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all\n", b"PK\x03\x04garbage"])
def test_non_checkpoint_files_are_refused(content, tmp_path):
    path = tmp_path / "SegVol_v1.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_segvol(path, device="cpu")


@pytest.mark.parametrize("seed", [8, 15])  # garbage after a pickle header: IndexError / KeyError in the unpickler
def test_damaged_pickle_is_refused(seed, tmp_path):
    import random

    rng = random.Random(seed)
    path = tmp_path / "SegVol_v1.pth"
    path.write_bytes(b"\x80\x02" + bytes(rng.randrange(256) for _ in range(200)))
    with pytest.raises(CheckpointError, match="cannot read"):
        load_segvol(path, device="cpu")


def test_truncated_checkpoint_is_refused(synthetic_checkpoint, tmp_path):
    path = tmp_path / "SegVol_v1.pth"
    with open(synthetic_checkpoint, "rb") as source, open(path, "wb") as target:
        target.write(source.read(5_000_000))
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        load_segvol(path, device="cpu")


def test_truncated_safetensors_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    from safetensors.torch import save_file

    save_file({"model.image_encoder.norm.weight": torch.ones(768)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_segvol(path, device="cpu")


def test_tensor_file_of_another_model_is_refused(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(CheckpointError, match="not a SegVol checkpoint"):
        load_segvol(path, device="cpu")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return shutil.copyfile, (__file__, self.marker)


@pytest.mark.parametrize("zip_format", [True, False])
def test_pickle_that_would_run_code_is_refused(zip_format, tmp_path):
    marker = tmp_path / "code-was-run"
    path = tmp_path / "SegVol_v1.pth"
    payload = {"model": {"module.image_encoder.norm.weight": torch.ones(768)}, "hook": _RunsCode(str(marker))}
    torch.save(payload, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_segvol(path, device="cpu")
    assert not marker.exists()


def test_missing_source_and_empty_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_segvol(tmp_path / "nowhere.pth", device="cpu")
    with pytest.raises(CheckpointError, match="no SegVol weights in folder"):
        load_segvol(tmp_path, device="cpu")


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA was requested"):
            resolve_device("cuda")
