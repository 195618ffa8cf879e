"""Results for the clinic: statistics and confidence per segment, DICOM SEG output.

numpy only, except dicom_seg (highdicom and pydicom, imported on first use).
"""
