"""The Extensions Index's review (Slicer/ExtensionsIndex scripts/extension_ai_analysis.py asks a language model
these questions of every submission), answered by tests where a test can: the README's "How to cite" and its
step-by-step tutorial naming where the sample data comes from, and torch never installed with pip_install.
(File-scope imports and calls: test_slicer_stock_imports.py.)
"""

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
README = (REPO / "README.md").read_text(encoding="utf-8")
# Volumes of Slicer's Sample Data module (SampleData.py's sample sources) the tutorial may use
SLICER_SAMPLE_CTS = {"CTAAbdomenPanoramix", "CTChest", "CTACardio"}


def section(title_pattern: str) -> str:
    """The text of the README section whose heading matches, up to the next heading of the same or a higher
    level; '' when there is none."""
    found = re.search(rf"^(#+) +{title_pattern}.*$", README, re.M)
    if not found:
        return ""
    level = len(found.group(1))
    rest = README[found.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.M)
    return rest[: end.start()] if end else rest


def test_readme_says_how_to_cite_segvol_and_this_extension():
    cite = section("How to cite")
    assert cite, "the index asks for a 'How to cite' section"
    assert "SegVol: Universal and Interactive Volumetric Medical Image Segmentation" in cite
    assert "2311.13385" in cite and "NeurIPS 2024" in cite  # the paper, findable
    scm_url = json.loads((REPO / "SegVolSlicer.json").read_text())["scm_url"]
    assert scm_url in cite, "this extension, by the repository the index builds"
    assert "```bibtex" in cite


def test_readme_has_a_step_by_step_tutorial_on_slicers_sample_data():
    tutorial = section("Tutorial")
    steps = re.findall(r"^\d+\. ", tutorial, re.M)
    assert len(steps) >= 5, "a step-by-step tutorial"
    named = {name for name in SLICER_SAMPLE_CTS if name in tutorial}
    assert named and "Sample Data" in tutorial, "it says where its sample data comes from"
    assert "SampleData.downloadSample(" in tutorial
    assert "Segment" in tutorial and "SegVol" in tutorial


def test_torch_is_never_installed_with_pip_install():
    """'Does it directly use pip_install to install pytorch?': no slicer.util.pip_install anywhere, and the
    installer runs pip only on requirement files, light-the-torch and a dry run (torch: light-the-torch)."""
    sources = [REPO / "SegVolSlicer" / "SegVolSlicer.py", *(REPO / "SegVolSlicer" / "SegVolSlicerLib").rglob("*.py")]
    assert [str(p) for p in sources if "pip_install" in p.read_text(encoding="utf-8")] == []
    installer = (REPO / "SegVolSlicer" / "SegVolSlicerLib" / "slicer" / "dependencies.py").read_text()
    pip_calls = re.findall(r'run_python_module\("pip", (\[[^\]]*\]|[\w.()]+)', installer)
    installs_torch = [call for call in pip_calls if "torch" in call and "--dry-run" not in call]
    assert len(pip_calls) >= 2 and all("LIGHT_THE_TORCH" in call for call in installs_torch), pip_calls
