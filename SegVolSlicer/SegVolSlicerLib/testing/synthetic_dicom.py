"""A synthetic CT written as a DICOM series (pydicom), for DICOM SEG tests and benchmarks.

The series has an oblique orientation (rows and columns rotated about the patient's axes), slices whose
positions run against the slice normal, and files named in no slice order, so that a writer that assumes
axial, ascending or file-name order gets the geometry wrong.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def oblique_axes(angle_degrees: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """(row direction, column direction) in LPS: axial rotated about z, then tilted about the row direction."""
    a = np.radians(angle_degrees)
    row = np.array([np.cos(a), np.sin(a), 0.0])
    column = np.array([-np.sin(a), np.cos(a), 0.0])
    tilt = np.radians(angle_degrees / 2)
    column = np.cos(tilt) * column + np.sin(tilt) * np.array([0.0, 0.0, 1.0])
    column -= row * (row @ column)
    return row, column / np.linalg.norm(column)


def write_ct_series(
    folder: str | os.PathLike,
    hu_kji: np.ndarray,
    spacing_ijk=(0.9, 0.8, 2.5),
    origin_lps=(-10.0, 20.0, 40.0),
    seed: int = 0,
) -> list[Path]:
    """Write `hu_kji` (int16 HU, (K, J, I)) as one CT series; returns the files written (shuffled names).

    Slice k lies at origin - k * spacing_k along the slice normal (descending positions)."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    row, column = oblique_axes()
    normal = np.cross(row, column)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    order = np.random.default_rng(seed).permutation(hu_kji.shape[0])
    files = []
    for k in range(hu_kji.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{order[k]:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Synthetic^CT", "SEGVOL-TEST", "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", ""
        ds.ReferringPhysicianName, ds.Manufacturer = "", "SegVolSlicer tests"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 3, int(order[k]) + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        position = np.asarray(origin_lps) - k * spacing_ijk[2] * normal
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *column)]
        ds.PixelSpacing = [f"{spacing_ijk[1]:g}", f"{spacing_ijk[0]:g}"]  # row spacing (j), column spacing (i)
        ds.SliceThickness = f"{spacing_ijk[2]:g}"
        ds.Rows, ds.Columns = hu_kji.shape[1], hu_kji.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
        ds.PixelData = np.ascontiguousarray(hu_kji[k], dtype=np.int16).tobytes()
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        files.append(path)
    return files
