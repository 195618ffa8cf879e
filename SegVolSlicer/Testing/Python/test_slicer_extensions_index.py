"""The rules Slicer/ExtensionsIndex's checker (scripts/check_description_files.py) applies to a submission,
checked on this repository offline: a catalogue entry the index would reject fails here first.

Rules (checker at 07f1d1b, 2026-08-07): the entry validates against Slicer's catalogue schema and has LF line
endings; the extension name (the .json file's name) does not start with "Slicer" and is the top-level CMake
project's name; the git repository's name starts with "Slicer" (or Slicer-, Slicer_, SlicerExtension-/_); the
SCM URL is git:// or https://; the category is one the index accepts; CMakeLists.txt sets EXTENSION_ICONURL and
EXTENSION_SCREENSHOTURLS to image URLs (here: raw URLs of images in this repository); a license file is at the
root; the repository is under 100 MB.
"""

import json
import re
import subprocess
import urllib.parse
from pathlib import Path

import jsonschema
import pytest

REPO = Path(__file__).resolve().parents[3]
DATA = Path(__file__).resolve().parents[1] / "Data"
ENTRY = REPO / "SegVolSlicer.json"
LICENSE_NAMES = ["LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt"]
REPOSITORY_PREFIXES = ("Slicer", "Slicer-", "Slicer_", "SlicerExtension-", "SlicerExtension_")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif")


@pytest.fixture(scope="module")
def entry():
    return json.loads(ENTRY.read_text())


def cmake_setting(name):
    """The quoted value of set(NAME "...") in the top-level CMakeLists.txt, None when absent."""
    found = re.search(rf'set\s*\({name}\s*"([^"]*)"\s*\)', (REPO / "CMakeLists.txt").read_text(), re.I)
    return found.group(1) if found else None


def repository_file_for_raw_url(url, scm_url):
    """The file of this repository that a raw.githubusercontent.com URL of the SCM repository serves."""
    parts = urllib.parse.urlsplit(url)
    owner_repo = urllib.parse.urlsplit(scm_url).path.strip("/").removesuffix(".git")
    assert parts.scheme == "https" and parts.netloc == "raw.githubusercontent.com", url
    assert parts.path.startswith(f"/{owner_repo}/"), f"{url} is not in {scm_url}"
    branch_and_path = parts.path[len(owner_repo) + 2 :]
    return REPO / branch_and_path.split("/", 1)[1]


def test_entry_validates_against_the_catalogue_schema(entry):
    schema = json.loads((DATA / "slicer-extension-catalog-entry-schema-v1.0.2.json").read_text())
    assert entry["$schema"].split("#")[0] == schema["$id"].split("#")[0]
    jsonschema.validate(entry, schema)
    assert b"\r" not in ENTRY.read_bytes(), "the index wants LF line endings"


def test_names(entry):
    extension_name = ENTRY.stem
    assert not extension_name.lower().startswith("slicer"), "the extension name must not start with 'Slicer'"
    project = re.search(r"project\s*\(\s*([^\s)]+)", (REPO / "CMakeLists.txt").read_text(), re.I).group(1)
    assert project.strip("\"'") == extension_name
    repository = Path(urllib.parse.urlsplit(entry["scm_url"].strip().strip("/")).path).stem
    assert repository.startswith(REPOSITORY_PREFIXES), f"the git repository name '{repository}' must start with Slicer"


def test_scm_url_and_category(entry):
    assert "://" in entry["scm_url"] and urllib.parse.urlsplit(entry["scm_url"]).scheme in ("git", "https")
    accepted = json.loads((DATA / "extensions-index-categories.json").read_text())["accepted_categories"]
    assert entry["category"] in accepted


def test_icon_and_screenshots_are_images_of_this_repository(entry):
    icon, screenshots = cmake_setting("EXTENSION_ICONURL"), cmake_setting("EXTENSION_SCREENSHOTURLS")
    assert icon and screenshots, "CMakeLists.txt must set EXTENSION_ICONURL and EXTENSION_SCREENSHOTURLS"
    for url in [icon, *screenshots.split()]:
        assert url.startswith("http") and url.lower().endswith(IMAGE_SUFFIXES), url
        image = repository_file_for_raw_url(url, entry["scm_url"])
        assert image.is_file() and image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", url
        assert image.stat().st_size > 2000, f"{url}: a picture, not a blank image"


def test_license_matches_the_package():
    (license_file,) = [REPO / name for name in LICENSE_NAMES if (REPO / name).is_file()]
    declared = re.search(r'license\s*=\s*\{\s*text\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert license_file.read_text().startswith(f"{declared} License")


def test_repository_is_under_100_mb():
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    size = sum((REPO / name).stat().st_size for name in tracked.decode().split("\0") if (REPO / name).is_file())
    assert size < 100 * 2**20
