"""Annotating a whole dataset: a campaign's cases, their order and status, one annotator per case (locks),
the accepted labels with how they were made (records), and what is done with them (nnU-Net export, replay).

Qt-free and MRML-free; the Slicer section (slicer/campaign_section.py) and `segvol campaign` are its faces.
"""
