"""Stand-in for light-the-torch in the Slicer twin (.ci/slicer-twin); see __main__."""
