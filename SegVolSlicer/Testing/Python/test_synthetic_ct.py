"""The synthetic CT: geometry, anatomy, file round trip, and agreement with the pipeline goldens."""

from pathlib import Path

import numpy as np
import pytest

from SegVolSlicerLib.testing.synthetic_ct import make_synthetic_ct, write_ct

GOLDENS = Path(__file__).resolve().parents[1] / "Data" / "goldens" / "pipeline_goldens.npz"


@pytest.fixture(scope="module")
def ct():
    return make_synthetic_ct(seed=0)


def _centroid_ras(ct, label):
    k, j, i = np.argwhere(ct.labels == label).mean(axis=0)
    return (ct.ijk_to_ras @ [i, j, k, 1.0])[:3]


def test_geometry_is_oblique_lps_and_anisotropic(ct):
    assert ct.volume.shape == ct.labels.shape == (48, 160, 192)
    assert ct.volume.dtype == np.int16 and ct.labels.dtype == np.uint8
    np.testing.assert_allclose(ct.spacing, (0.8, 0.8, 2.5))
    axes = ct.ijk_to_ras[:3, :3]
    assert axes[0, 0] < 0 and axes[1, 1] < 0 and axes[2, 2] > 0  # i -> patient left, j -> posterior (as DICOM)
    assert np.abs(axes - np.diag(np.diag(axes))).max() > 0.01  # oblique, not axis-aligned


def test_organs_are_placed_anatomically(ct):
    names = {name: label for label, name in ct.label_names.items()}
    assert set(np.unique(ct.labels)) == {0, *ct.label_names}
    liver, spleen = _centroid_ras(ct, names["liver"]), _centroid_ras(ct, names["spleen"])
    right_kidney, left_kidney = _centroid_ras(ct, names["right kidney"]), _centroid_ras(ct, names["left kidney"])
    assert liver[0] > spleen[0] + 50  # RAS: +R is the patient's right
    assert right_kidney[0] > left_kidney[0] + 40
    assert right_kidney[2] < left_kidney[2]  # the right kidney sits lower, under the liver
    body = ct.volume > -500
    assert not body[:, 0, :].any() and not body[:, :, 0].any()  # air around the body: cropping has work to do


def test_organs_have_distinct_intensities(ct):
    means = [ct.volume[ct.labels == label].mean() for label in ct.label_names]
    assert min(np.diff(sorted(means))) > 5


def test_seed_changes_only_the_noise(ct):
    other = make_synthetic_ct(seed=1)
    assert np.array_equal(other.labels, ct.labels)
    assert not np.array_equal(other.volume, ct.volume)
    assert np.array_equal(make_synthetic_ct(seed=0).volume, ct.volume)


def test_written_files_carry_the_true_geometry(ct, tmp_path):
    import nibabel
    import SimpleITK as sitk

    image_path, label_path = tmp_path / "ct.nii.gz", tmp_path / "labels.nrrd"
    write_ct(ct, image_path, label_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "labels.nrrd"]  # no temporary left over

    image = sitk.ReadImage(str(image_path))
    assert np.array_equal(sitk.GetArrayFromImage(image), ct.volume)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(label_path))), ct.labels)
    ijk_to_lps = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    np.testing.assert_allclose(np.diag([-1, -1, 1]) @ ijk_to_lps, ct.ijk_to_ras[:3, :3], atol=1e-6)
    np.testing.assert_allclose(np.diag([-1, -1, 1]) @ image.GetOrigin(), ct.ijk_to_ras[:3, 3], atol=1e-4)
    # NIfTI stores RAS; nibabel's (i,j,k) array is the transpose of the (K,J,I) one.
    nifti = nibabel.load(str(image_path))
    np.testing.assert_allclose(nifti.affine, ct.ijk_to_ras, atol=1e-4)
    assert np.array_equal(np.asarray(nifti.dataobj).transpose(2, 1, 0), ct.volume)


@pytest.mark.parametrize("case, slices", [("full", slice(None)), ("thin", slice(8, 40))])
def test_pipeline_goldens_were_made_from_this_ct(ct, case, slices):
    with np.load(GOLDENS) as golden:
        assert golden[f"{case}.pre.input_hu_sum"] == ct.volume[slices].astype(np.int64).sum()
        np.testing.assert_array_equal(
            golden[f"{case}.pre.input_label_counts"], np.bincount(ct.labels[slices].ravel(), minlength=6)
        )
