#!/usr/bin/env bash
# Write .ci/slicer-constraints/slicer-<major.minor>.txt: the Python packages a 3D Slicer release bundles, read
# from Slicer's SuperBuild/External_python-*.cmake at a tag. Needs a clone of github.com/Slicer/Slicer.
#   tools/slicer_constraints.sh /path/to/Slicer v5.12.3
set -euo pipefail
slicer_git="$1" tag="$2"
version="${tag#v}"
out="$(cd "$(dirname "$0")/.." && pwd)/.ci/slicer-constraints/slicer-${version%.*}.txt"
cd "$slicer_git"
{
  echo "# Python packages bundled with 3D Slicer $tag (Python 3.12.10): the pins of Slicer/Slicer's"
  echo "# SuperBuild/External_python-*.cmake at tag $tag ($(git rev-parse --short "$tag^{commit}")), hashes dropped."
  echo "# Regenerate: tools/slicer_constraints.sh <tag>. Used by .ci/check-slicer-requirements and .ci/slicer-twin."
  for f in $(git ls-tree --name-only "$tag" SuperBuild/ | grep "External_python-"); do
    git show "$tag:$f" | { grep -oE "^\s*[A-Za-z0-9_.-]+==[0-9][^ ]*" || true; } | tr -d ' '
  done | sort -uf
} > "$out"
echo "wrote $out"
