"""Golden outputs of the official SegVol code, on synthetic weights and the synthetic CT.

    python tools/make_goldens.py --official /path/to/BAAI-DCAI/SegVol [--out DIR] [--only model|pipeline]

The official code is imported from the checkout given on the command line and is never copied here. It was
written for MONAI 0.9, transformers 4.18 and CUDA; this harness runs it unchanged on CPU with the project's
current libraries by monkeypatching, from the outside, only what those libraries broke:

* MONAI >= 1.4 removed ViT's `pos_embed=` (now `proj_type=`); MONAI 1.6 also builds an unused
  `norm_cross_attn` LayerNorm per block, replaced by nn.Identity so the official keys load strictly.
* `.cuda()` is hard-coded everywhere: made a no-op for tensors and modules.
* torchvision is imported by SAM leftovers that inference never calls: stub modules.
* transformers 5 CLIP: no `text_model.` level in the keys and no `position_ids` buffer (keys are renamed
  when loading); attention forced to "eager", which reproduces transformers 4.18 exactly (SDPA differs ~1e-6).
* MONAI >= 1.3 data loading: `LoadImage` returns only the image unless `image_only=False`; the official
  `Orientationd` (a no-op there: the dict carries no affine) fails on plain arrays and is made an identity;
  `ToTensord` now returns MetaTensors with the strides of the axis swap, made plain contiguous tensors again.
* `utils.visualize` (matplotlib drawing, never used here) is replaced by a stub.

Everything that is recorded comes from the official functions' own arguments and return values, captured
by wrapping them (the model, `logits2roi_coor`, `dense_patch_slices`, `dice_score`, the transforms).
The goldens README (SegVolSlicer/Testing/Data/goldens/README.md) documents every array.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SegVolSlicer"))
sys.path.insert(0, str(REPO / "SegVolSlicer" / "Testing" / "Python"))  # fake_segvol: the stand-in network

from SegVolSlicerLib.testing.synthetic_ct import make_synthetic_ct, model_input_image, write_ct  # noqa: E402
from SegVolSlicerLib.testing.synthetic_weights import synthetic_state_dict  # noqa: E402

SPATIAL_SIZE = (32, 256, 256)
PATCH_SIZE = (4, 16, 16)

# Model-level prompts, in (d, h, w) voxels of the 32x256x256 input.
MODEL_BOX = [[4.0, 60.0, 70.0, 20.0, 150.0, 160.0]]
MODEL_POINTS = [[[16.0, 100.0, 120.0], [10.0, 140.0, 90.0], [24.0, 200.0, 200.0]]]
MODEL_POINT_LABELS = [[1.0, 1.0, 0.0]]
MODEL_TEXT_BATCH = ["liver", "left kidney"]  # different token lengths: exercises padding

# mode -> (text, box, points), as the demo's use_text_prompt / use_box_prompt / use_point_prompt flags.
PIPELINE_MODES = {
    "text": (True, False, False),
    "box": (False, True, False),
    "text_box": (True, True, False),
    "points": (False, False, True),
    "text_points": (True, False, True),
}
# case -> (slices of the synthetic CT, organs, modes). "thin" has exactly 32 slices, so the zoom-in is a
# single window and the official single-window paths (the user's box cube, the padding offset) run too.
PIPELINE_CASES = {
    "full": (slice(None), ["liver", "spleen"], list(PIPELINE_MODES)),
    "thin": (slice(8, 40), ["spleen"], ["box", "text_box", "points"]),
}

# The stand-in network (fake_segvol.BandSegVol) on the layout phantom: localised masks, so the branches that
# synthetic weights never reach run too (ROI inside the crop, widened and clamped; several windows along D
# and W; empty windows; empty zoom-out).
STANDIN_CASES = {"layout": (slice(None), ["pancreas", "spleen", "kidney", "stomach"], list(PIPELINE_MODES))}


class _Stub(types.ModuleType):
    """Stands in for a module that inference never uses; fails loudly if it is used after all."""

    __path__: list[str] = []

    def __getattr__(self, name):
        if name.startswith("__"):  # module protocol (__file__, __spec__ ...): behave like a plain module
            raise AttributeError(name)

        def unavailable(*args, **kwargs):
            raise RuntimeError(f"{self.__name__}.{name} is stubbed by make_goldens.py")

        return unavailable


def install_patches(official: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import transformers  # before the stubs: transformers probes for a real torchvision at import

    for name in (
        "torchvision",
        "torchvision.transforms",
        "torchvision.transforms.functional",
        "torchvision.ops",
        "torchvision.ops.boxes",
        "utils.visualize",
    ):
        sys.modules[name] = _Stub(name)
    sys.path.insert(0, str(official))

    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self

    import monai.networks.nets as nets

    monai_vit = nets.ViT

    def vit(*args, pos_embed="conv", **kwargs):
        module = monai_vit(*args, proj_type=pos_embed, **kwargs)
        for block in module.blocks:
            block.norm_cross_attn = torch.nn.Identity()
        return module

    nets.ViT = vit
    import segment_anything_volumetric.build_sam as build_sam

    build_sam.ViT = vit

    import network.model as official_model

    official_model.CLIPTextConfig = lambda: transformers.CLIPTextConfig(attn_implementation="eager")

    import data_process.demo_data_process as demo_data_process
    import monai.transforms

    class Transforms(types.ModuleType):
        def __getattr__(self, name):
            return getattr(monai.transforms, name)

    patched = Transforms("monai.transforms (patched for the official demo)")
    patched.LoadImage = lambda *args, **kwargs: monai.transforms.LoadImage(*args, image_only=False, **kwargs)
    patched.Orientationd = lambda *args, **kwargs: lambda data: data
    demo_data_process.transforms = patched


def build_official_segvol(official: Path):
    import segment_anything_volumetric.build_sam as build_sam
    from network.model import SegVol

    args = types.SimpleNamespace(patch_size=PATCH_SIZE, spatial_size=SPATIAL_SIZE)
    sam = build_sam.build_sam_vit_3d(args)
    model = SegVol(
        sam.image_encoder,
        sam.mask_decoder,
        sam.prompt_encoder,
        str(official / "config" / "clip"),
        SPATIAL_SIZE,
        PATCH_SIZE,
        test_mode=True,
    )
    state = {
        key.replace("clip_text_model.text_model.", "clip_text_model."): value
        for key, value in synthetic_state_dict(seed=0).items()
        if not key.endswith("position_ids")
    }
    model.load_state_dict(state, strict=True)
    return model.eval()


def _stats(logits: torch.Tensor) -> np.ndarray:
    """Per batch item: mean, std, number of voxels with logit > 0 (float64)."""
    flat = logits.detach().double().reshape(logits.shape[0], -1)
    return torch.stack([flat.mean(1), flat.std(1), (flat > 0).sum(1).double()], 1).numpy()


def model_goldens(model) -> dict[str, np.ndarray]:
    image = model_input_image(seed=0)
    box = torch.tensor(MODEL_BOX)
    points = (torch.tensor(MODEL_POINTS), torch.tensor(MODEL_POINT_LABELS))

    captured = {}
    model.mask_decoder.register_forward_pre_hook(
        lambda module, args, kwargs: captured.__setitem__("image_embedding", kwargs["image_embeddings"]),
        with_kwargs=True,
    )
    model.mask_decoder.register_forward_hook(lambda module, args, output: captured.__setitem__("low_res", output[0]))

    out: dict[str, np.ndarray] = {
        "input_image_sub": image[..., ::4, ::32, ::32].numpy(),
        "input_image_sum": np.float64(image.double().sum()),
        "box": box.numpy(),
        "points_coords": points[0].numpy(),
        "points_labels": points[1].numpy(),
        "text_batch_names": np.array(MODEL_TEXT_BATCH),
        "image_embedding_channels": np.arange(0, 768, 16),
    }
    with torch.no_grad():
        start = time.perf_counter()
        full_call = model(image, text=["liver"], boxes=box)
        print(f"official full forward (text+box): {time.perf_counter() - start:.1f} s")
        embedding = captured["image_embedding"]
        out["image_embedding_sub"] = embedding[:, ::16].numpy()
        out["image_embedding_stats"] = _stats(embedding)
        out["text_embedding_liver"] = model.text_encoder(["liver"]).numpy()
        out["text_embedding_batch"] = model.text_encoder(MODEL_TEXT_BATCH).numpy()
        out["call_text_box_logits_sub"] = _sub(full_call)

        cases = {
            "text": dict(text=["liver"]),
            "box": dict(boxes=box),
            "points": dict(points=points),
            "text_box": dict(text=["liver"], boxes=box),
            "text_points": dict(text=["liver"], points=points),
            "box_points": dict(boxes=box, points=points),
        }
        for name, prompts in cases.items():
            logits = model.forward_decoder(embedding, SPATIAL_SIZE, **prompts)
            if name == "text_box":
                assert torch.equal(logits, full_call), "decoder-only path differs from the official forward"
            _record_logits(out, name, logits, captured["low_res"])
        batch = model.forward_decoder(embedding.expand(2, -1, -1, -1, -1), SPATIAL_SIZE, text=MODEL_TEXT_BATCH)
        _record_logits(out, "text_batch", batch, captured["low_res"])
    return out


def _record_logits(out, name, logits, low_res):
    out[f"{name}_logits_sub"] = _sub(logits)
    out[f"{name}_low_res_sub"] = low_res[..., ::2, ::4, ::4].numpy()
    out[f"{name}_stats"] = _stats(logits)
    print(f"  {name:12s} mean {out[f'{name}_stats'][:, 0]} positive {out[f'{name}_stats'][:, 2]}")


def _frozen(value):
    """A copy of tensors (also inside tuples): the official code later edits some arguments in place."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple):
        return tuple(_frozen(v) for v in value)
    return value


class _Recorder:
    """Wraps a callable and keeps (args, kwargs, result) of every call, as they were at call time."""

    def __init__(self, function):
        self.function, self.calls = function, []

    def __call__(self, *args, **kwargs):
        frozen_args, frozen_kwargs = _frozen(args), {k: _frozen(v) for k, v in kwargs.items()}
        result = self.function(*args, **kwargs)
        self.calls.append((frozen_args, frozen_kwargs, result))
        return result


def _numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.as_tensor().numpy() if hasattr(array, "as_tensor") else array.numpy()
    return np.asarray(array)


def _sub(array) -> np.ndarray:
    return np.asarray(array)[..., ::2, ::8, ::8].copy()


def _image_stats(array) -> np.ndarray:
    """min, max, mean, std of an image (float64)."""
    array = np.asarray(array, dtype=np.float64)
    return np.array([array.min(), array.max(), array.mean(), array.std()])


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


def preprocess_goldens(ct_path: Path, label_path: Path, names: list[str]):
    """Run the official demo preprocessing, snapshotting the image after every transform."""
    import data_process.demo_data_process as demo_data_process
    import monai.transforms

    snapshots = {}

    class Snapshot:
        def __init__(self, transform):
            self.transform = transform

        def __call__(self, data):
            data = self.transform(data)
            snapshots[type(self.transform).__name__] = _numpy(data["image"]).astype(np.float32)
            return data

    demo_data_process.transforms.Compose = lambda steps: monai.transforms.Compose([Snapshot(s) for s in steps])
    item = demo_data_process.process_ct_gt(str(ct_path), str(label_path), names, SPATIAL_SIZE)
    # MONAI 0.9's ToTensord returned plain contiguous tensors; 1.6 returns MetaTensors that keep the
    # transposed strides, on which the demo's `.view()` fails. Same values either way.
    return {
        key: torch.from_numpy(np.ascontiguousarray(_numpy(value))) if isinstance(value, torch.Tensor) else value
        for key, value in item.items()
    }, snapshots


def pipeline_goldens(model_for, workdir: Path, full_ct, cases) -> dict[str, np.ndarray]:
    """`model_for(ct, minmax)` gives the network to run on a case (minmax: its normalised (K,J,I) image)."""
    import inference_demo
    import utils.monai_inferers_utils as inferers

    recorders = {
        "dense_patch_slices": _Recorder(inferers.dense_patch_slices),
        "logits2roi_coor": _Recorder(inference_demo.logits2roi_coor),
        "dice_score": _Recorder(inference_demo.dice_score),
        "sliding_window_inference": _Recorder(inference_demo.sliding_window_inference),
    }
    inferers.dense_patch_slices = recorders["dense_patch_slices"]
    for name in ("logits2roi_coor", "dice_score", "sliding_window_inference"):
        setattr(inference_demo, name, recorders[name])

    out: dict[str, np.ndarray] = {}
    for case, (slices, organs, modes) in cases.items():
        ct = _slab(full_ct, slices)
        ct_path, label_path = workdir / f"{case}_ct.nii.gz", workdir / f"{case}_labels.nii.gz"
        write_ct(ct, ct_path, label_path)
        names = [ct.label_names[value] for value in sorted(ct.label_names)]
        item, snapshots = preprocess_goldens(ct_path, label_path, names)
        image, zoom_out_image, crop = _record_preprocessing(out, f"{case}.pre", ct, item, snapshots)
        model = model_for(ct, snapshots["MinMaxNormalization"][0])
        for organ in organs:
            index = names.index(organ)
            for mode in modes:
                use_text, use_box, use_point = PIPELINE_MODES[mode]
                key = f"{case}.{organ}.{mode}"
                args = types.SimpleNamespace(
                    spatial_size=SPATIAL_SIZE,
                    infer_overlap=0.5,
                    use_zoom_in=True,
                    use_text_prompt=use_text,
                    use_box_prompt=use_box,
                    use_point_prompt=use_point,
                )
                for recorder in recorders.values():
                    recorder.calls.clear()
                predictor = _Recorder(model)
                torch.manual_seed(0)  # point prompts are drawn with torch.randint/randperm
                start = time.perf_counter()
                record = inference_demo.zoom_in_zoom_out(
                    args,
                    predictor,
                    image.unsqueeze(0),
                    zoom_out_image.unsqueeze(0),
                    item["label"][index : index + 1].unsqueeze(0),
                    item["zoom_out_label"][index : index + 1].unsqueeze(0),
                    categories=[organ],
                )
                out[f"{key}.runtime_s"] = np.float64(time.perf_counter() - start)
                _record_run(out, key, predictor, recorders, record[organ][4], ct, crop, index)
                print(
                    f"{key}: {len(predictor.calls)} forwards, {out[f'{key}.runtime_s']:.1f} s, "
                    f"dice zoom-out {out[f'{key}.dice_zoom_out']:.4f} final {out[f'{key}.dice']:.4f}"
                )
    return out


def standin_model(out: dict[str, np.ndarray]):
    """`model_for` of the stand-in goldens: the band of each organ is its normalised intensity (the phantom
    has no noise, so every organ voxel has the same value), except the one meant to be found nowhere."""
    from fake_segvol import LAYOUT_EMPTY_BAND, BandSegVol

    def model_for(ct, minmax):
        bands = {
            name: (float(minmax[ct.labels == value][0]) if name != "stomach" else LAYOUT_EMPTY_BAND)
            for value, name in ct.label_names.items()
        }
        out["bands_names"], out["bands_values"] = np.array(list(bands)), np.array(list(bands.values()))
        return BandSegVol(bands)

    return model_for


def _slab(ct, slices: slice):
    """The CT restricted to some slices, its matrix moved so the kept voxels stay where they were."""
    ijk_to_ras = ct.ijk_to_ras.copy()
    ijk_to_ras[:3, 3] += ijk_to_ras[:3, 2] * (slices.start or 0)
    return type(ct)(
        volume=ct.volume[slices], labels=ct.labels[slices], ijk_to_ras=ijk_to_ras, label_names=ct.label_names
    )


def _record_preprocessing(out, prefix, ct, item, snapshots):
    normalised_kji = snapshots["ForegroundNormalization"][0].transpose(2, 1, 0)  # (1,i,j,k) -> (K,J,I)
    minmax = snapshots["MinMaxNormalization"][0]
    out[f"{prefix}.input_shape"] = np.array(ct.volume.shape)
    out[f"{prefix}.input_hu_sum"] = np.int64(ct.volume.astype(np.int64).sum())
    out[f"{prefix}.input_label_counts"] = np.bincount(ct.labels.ravel(), minlength=6).astype(np.int64)
    out[f"{prefix}.normalised_stats"] = _image_stats(normalised_kji)
    out[f"{prefix}.normalised_sub"] = _sub(normalised_kji)
    out[f"{prefix}.minmax_stats"] = _image_stats(minmax)
    out[f"{prefix}.minmax_sub"] = _sub(minmax)
    padded_shape = np.array(snapshots["SpatialPadd"].shape[1:])
    pad_before = (padded_shape - np.array(ct.volume.shape)) // 2
    out[f"{prefix}.pad_before"] = pad_before
    out[f"{prefix}.crop_start_padded"] = np.asarray(item["foreground_start_coord"], dtype=np.int64)
    out[f"{prefix}.crop_end_padded"] = np.asarray(item["foreground_end_coord"], dtype=np.int64)
    crop_start = out[f"{prefix}.crop_start_padded"] - pad_before
    crop_end = out[f"{prefix}.crop_end_padded"] - pad_before
    out[f"{prefix}.crop_start"], out[f"{prefix}.crop_end"] = crop_start, crop_end
    image = item["image"].float()  # (1, D', H', W')
    crop = tuple(slice(s, e) for s, e in zip(crop_start, crop_end))
    # The demo pads before cropping, the HF port does not: the same voxels, coordinates shifted by the pad.
    assert np.array_equal(image[0].numpy(), minmax[crop]), "crop does not map back onto the input grid"
    out[f"{prefix}.cropped_shape"] = np.array(image.shape[1:])
    out[f"{prefix}.cropped_stats"] = _image_stats(image)
    out[f"{prefix}.cropped_sub"] = _sub(image[0])
    zoom_out_image = item["zoom_out_image"].float()
    out[f"{prefix}.zoom_out_stats"] = _image_stats(zoom_out_image)
    out[f"{prefix}.zoom_out_sub"] = _sub(zoom_out_image[0])
    out[f"{prefix}.zoom_out_image_sum"] = np.float64(zoom_out_image.double().sum())
    return image, zoom_out_image, crop


def _record_run(out, key, predictor, recorders, final_logits, ct, crop, index):
    dice_score = recorders["dice_score"]
    _, zoom_out_prompts, zoom_out_logits = predictor.calls[0]
    if zoom_out_prompts["boxes"] is not None:
        out[f"{key}.zoom_out_box"] = zoom_out_prompts["boxes"].numpy()
    if zoom_out_prompts["points"] is not None:
        out[f"{key}.zoom_out_points"] = zoom_out_prompts["points"][0].numpy()
        out[f"{key}.zoom_out_point_labels"] = zoom_out_prompts["points"][1].numpy()
    out[f"{key}.zoom_out_logits_sub"] = _sub(zoom_out_logits)
    out[f"{key}.zoom_out_logits_stats"] = _stats(zoom_out_logits)
    out[f"{key}.dice_zoom_out"] = np.float64(dice_score.calls[0][2])
    # dice_score's first argument is the zoom-out logits, nearest-upsampled to the cropped grid.
    zoom_out_kji = np.zeros(ct.volume.shape, dtype=bool)
    zoom_out_kji[crop] = (torch.sigmoid(dice_score.calls[0][0][0]) > 0.5).numpy()
    out[f"{key}.zoom_out_mask_bits"] = np.packbits(zoom_out_kji)

    roi = recorders["logits2roi_coor"].calls[0][2]
    if roi[0] is None:
        out[f"{key}.roi"] = np.full(6, -1, dtype=np.int64)
    else:
        out[f"{key}.roi"] = np.array([int(v) for v in roi], dtype=np.int64)
        (roi_image, *_), _, _ = recorders["sliding_window_inference"].calls[0]
        out[f"{key}.roi_shape"] = np.array(roi_image.shape[2:])
        (padded_size, _, interval), _, slices = recorders["dense_patch_slices"].calls[0]
        out[f"{key}.windows_padded_roi_shape"] = np.array(padded_size)
        out[f"{key}.windows_interval"] = np.array(interval)
        out[f"{key}.windows_start"] = np.array([[s.start for s in window] for window in slices], dtype=np.int64)
        boxes, points, labels, logits_sub = [], [], [], []
        for (_, _, box, point), _, logits in predictor.calls[1:]:  # (window image, text, box, points)
            boxes.append(box[0].numpy() if box is not None else np.full(6, np.nan, dtype=np.float32))
            if point is not None:
                points.append(point[0][0].numpy())
                labels.append(point[1][0].numpy())
            logits_sub.append(logits[0, 0, ::4, ::32, ::32].numpy())
        out[f"{key}.windows_box"] = np.stack(boxes)
        if points:  # a window with no click gets one ignore point instead of five: NaN rows pad it
            count = max(len(p) for p in points)
            out[f"{key}.windows_points"] = np.stack(
                [np.pad(p, ((0, count - len(p)), (0, 0)), constant_values=np.nan) for p in points]
            )
            out[f"{key}.windows_point_labels"] = np.stack(
                [np.pad(lab, (0, count - len(lab)), constant_values=np.nan) for lab in labels]
            )
        out[f"{key}.windows_logits_sub"] = np.stack(logits_sub)

    mask_cropped = (torch.sigmoid(final_logits) > 0.5).numpy()  # the official threshold
    # sigmoid(x) rounds to exactly 0.5 in fp32 for 0 < x < ~3e-8: count where "logit > 0" would differ.
    out[f"{key}.threshold_mismatches"] = np.int64((mask_cropped != (final_logits > 0).numpy()).sum())
    out[f"{key}.mask_cropped_bits"] = np.packbits(mask_cropped)
    out[f"{key}.final_logits_sub"] = _sub(final_logits)
    out[f"{key}.final_logits_stats"] = _stats(final_logits[None])[0]
    mask_kji = np.zeros(ct.volume.shape, dtype=bool)
    mask_kji[crop] = mask_cropped  # as the HF port's save_preds, in (K, J, I) order
    out[f"{key}.mask_bits"] = np.packbits(mask_kji)
    out[f"{key}.dice_official"] = np.float64(dice_score.calls[-1][2])
    out[f"{key}.dice"] = np.float64(_dice(mask_kji, ct.labels == index + 1))


def _versions() -> dict[str, np.ndarray]:
    import monai
    import transformers

    return {
        "versions": np.array(
            [
                f"python {platform.python_version()}",
                f"torch {torch.__version__}",
                f"monai {monai.__version__}",
                f"transformers {transformers.__version__}",
                f"numpy {np.__version__}",
            ]
        )
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="checkout of BAAI-DCAI/SegVol")
    parser.add_argument("--out", type=Path, default=REPO / "SegVolSlicer" / "Testing" / "Data" / "goldens")
    parser.add_argument("--only", choices=("model", "pipeline", "standin"))
    args = parser.parse_args(argv)
    official = args.official.resolve()
    install_patches(official)
    torch.set_grad_enabled(False)
    model = build_official_segvol(official) if args.only != "standin" else None
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "model"):
        np.savez_compressed(args.out / "model_goldens.npz", **model_goldens(model), **_versions())
        print(f"wrote {args.out / 'model_goldens.npz'}")
    if args.only in (None, "pipeline"):
        with tempfile.TemporaryDirectory() as workdir:
            goldens = pipeline_goldens(
                lambda ct, minmax: model, Path(workdir), make_synthetic_ct(seed=0), PIPELINE_CASES
            )
        np.savez_compressed(args.out / "pipeline_goldens.npz", **goldens, **_versions())
        print(f"wrote {args.out / 'pipeline_goldens.npz'}")
    if args.only in (None, "standin"):
        from fake_segvol import layout_ct

        goldens = {}
        with tempfile.TemporaryDirectory() as workdir:
            goldens.update(pipeline_goldens(standin_model(goldens), Path(workdir), layout_ct(), STANDIN_CASES))
        np.savez_compressed(args.out / "standin_goldens.npz", **goldens, **_versions())
        print(f"wrote {args.out / 'standin_goldens.npz'}")


if __name__ == "__main__":
    main()
