"""The extension folder: CMake files on Slicer's templates build the layout Slicer expects, list every file of
the package, and agree with the .s4ext description, the ExtensionsIndex entry and the icon."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
MODULE_DIR = REPO / "SegVolSlicer"
LAYOUT = "lib/Slicer-5.10/qt-scripted-modules"

# A stand-in for an installed Slicer: the macros check their arguments and copy files the way
# ctkMacroCompilePythonScript does (relative paths kept), and the extension config records the metadata.
FAKE_SLICER = {
    "SlicerConfig.cmake": """
        set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
        set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/GenerateConfig.cmake")
        set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/CPack.cmake")
    """,
    "UseSlicer.cmake": """
        set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "@LAYOUT@")
        set(BUILD_TESTING ON)
        foreach(var HOMEPAGE CATEGORY CONTRIBUTORS DESCRIPTION ICONURL SCREENSHOTURLS DEPENDS)
          if(NOT DEFINED EXTENSION_${var})
            message(FATAL_ERROR "EXTENSION_${var} is not set before include(Slicer_USE_FILE)")
          endif()
        endforeach()
        macro(slicerMacroBuildScriptedModule)
          cmake_parse_arguments(MY "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
          if(MY_UNPARSED_ARGUMENTS OR NOT MY_NAME)
            message(FATAL_ERROR "bad slicerMacroBuildScriptedModule arguments: ${MY_UNPARSED_ARGUMENTS}")
          endif()
          foreach(file ${MY_SCRIPTS} ${MY_RESOURCES})
            if(NOT EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/${file}")
              message(FATAL_ERROR "nonexistent file '${file}'")
            endif()
            get_filename_component(dir "${file}" DIRECTORY)
            file(COPY "${CMAKE_CURRENT_SOURCE_DIR}/${file}"
                 DESTINATION "${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/${dir}")
          endforeach()
          file(APPEND "${CMAKE_BINARY_DIR}/modules.txt" "${MY_NAME}\\n")
        endmacro()
        function(slicer_add_python_unittest)
          cmake_parse_arguments(ARG "" "SCRIPT" "SLICER_ARGS" ${ARGN})
          file(APPEND "${CMAKE_BINARY_DIR}/unittests.txt" "${ARG_SCRIPT}\\n")
        endfunction()
    """.replace("@LAYOUT@", LAYOUT),
    "GenerateConfig.cmake": """
        file(WRITE "${CMAKE_BINARY_DIR}/extension.json"
          "{\\"homepage\\": \\"${EXTENSION_HOMEPAGE}\\", \\"category\\": \\"${EXTENSION_CATEGORY}\\",
            \\"depends\\": \\"${EXTENSION_DEPENDS}\\", \\"iconurl\\": \\"${EXTENSION_ICONURL}\\",
            \\"contributors\\": \\"${EXTENSION_CONTRIBUTORS}\\", \\"description\\": \\"${EXTENSION_DESCRIPTION}\\"}")
    """,
    "CPack.cmake": "# packaging is Slicer's business\n",
}


def package_files() -> list[str]:
    """Files of SegVolSlicerLib as shipped: tracked by git (a checkout), else on disk."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "SegVolSlicerLib"], cwd=MODULE_DIR, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        listed = []
    if not listed:
        listed = [
            str(p.relative_to(MODULE_DIR))
            for p in (MODULE_DIR / "SegVolSlicerLib").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        ]
    return sorted(listed)


def cmake_listed(variable: str) -> list[str]:
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    block = re.search(rf"set\({variable}\n(.*?)\)", text, re.S).group(1)
    return [line.strip().replace("${MODULE_NAME}", "SegVolSlicer") for line in block.splitlines() if line.strip()]


def test_cmake_lists_every_file_of_the_package():
    listed = set(cmake_listed("MODULE_PYTHON_SCRIPTS")) | set(cmake_listed("MODULE_PYTHON_RESOURCES"))
    missing = [f for f in package_files() if f not in listed]
    assert not missing, f"add these to SegVolSlicer/CMakeLists.txt (so Slicer installs them): {missing}"
    for name in listed:
        assert (MODULE_DIR / name).is_file(), f"SegVolSlicer/CMakeLists.txt lists a missing file: {name}"
    assert all(f.endswith(".py") for f in cmake_listed("MODULE_PYTHON_SCRIPTS"))


@pytest.fixture(scope="module")
def built_extension(tmp_path_factory):
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    root = tmp_path_factory.mktemp("extension")
    slicer_dir, build = root / "FakeSlicer", root / "build"
    slicer_dir.mkdir()
    for name, content in FAKE_SLICER.items():
        (slicer_dir / name).write_text(textwrap.dedent(content))
    configure = subprocess.run(
        ["cmake", "-S", str(REPO), "-B", str(build), f"-DSlicer_DIR={slicer_dir}"], capture_output=True, text=True
    )
    assert configure.returncode == 0, configure.stdout + configure.stderr
    return build


def test_extension_builds_slicers_module_layout(built_extension):
    modules = built_extension / LAYOUT
    assert (built_extension / "modules.txt").read_text().split() == ["SegVolSlicer"]
    assert (built_extension / "unittests.txt").read_text().split() == ["SegVolSlicer.py"]
    for name in [
        "SegVolSlicer.py",
        "Resources/UI/SegVolSlicer.ui",
        "Resources/Icons/SegVolSlicer.png",
        "Resources/requirements.txt",
        "Resources/requirements-dicom.txt",
        *package_files(),
    ]:
        assert (modules / name).is_file(), name
    # The installed copy works on its own: the module imports, the package and its data resolve there.
    probe = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(modules)!r})
        sys.path.append({str(MODULE_DIR / "Testing" / "Python")!r})
        import slicer_core_env  # Slicer's application modules
        import SegVolSlicer, SegVolSlicerLib
        from SegVolSlicerLib import terminology, vocabulary
        assert SegVolSlicerLib.__file__.startswith({str(modules)!r}), SegVolSlicerLib.__file__
        assert SegVolSlicer.__file__.startswith({str(modules)!r})
        assert len(vocabulary.category_names()) == 222
        assert terminology.standard_term("liver").label == "liver"
        import os
        requirements = SegVolSlicer.REQUIREMENTS_FILE
        assert os.path.isfile(requirements) and requirements.startswith({str(modules)!r})
    """)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=built_extension)
    assert result.returncode == 0, result.stderr


def test_extension_metadata_agrees(built_extension):
    cmake = json.loads((built_extension / "extension.json").read_text())
    s4ext = dict(
        line.split(" ", 1) if " " in line else (line, "")
        for line in (REPO / "SegVolSlicer.s4ext").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    catalog = json.loads((REPO / "SegVolSlicer.json").read_text())
    assert cmake["category"] == s4ext["category"] == catalog["category"] == "Segmentation"
    assert cmake["depends"] == s4ext["depends"] == " ".join(catalog["build_dependencies"]) == "PyTorch"
    for key in ("homepage", "iconurl", "contributors", "description"):
        assert cmake[key] == s4ext[key], key
    assert s4ext["scmurl"].removesuffix(".git") == catalog["scm_url"]
    assert cmake["homepage"].startswith(catalog["scm_url"])
    assert cmake["iconurl"].endswith("/SegVolSlicer.png") and (REPO / "SegVolSlicer.png").is_file()
    # The ExtensionsIndex schema (v1.0.2): required keys, no unknown ones.
    assert {"$schema", "category", "scm_url"} <= set(catalog)
    assert set(catalog) <= {
        "$schema",
        "category",
        "scm_url",
        "scm_revision",
        "scm_type",
        "build_dependencies",
        "dicom_support_rule",
        "build_subdirectory",
        "enabled",
        "tier",
    }
    assert 1 <= catalog["tier"] <= 5


def test_icon_is_a_128_pixel_png():
    for path in (MODULE_DIR / "Resources" / "Icons" / "SegVolSlicer.png", REPO / "SegVolSlicer.png"):
        header = path.read_bytes()[:24]
        assert header[:8] == b"\x89PNG\r\n\x1a\n", path
        assert int.from_bytes(header[16:20], "big") == 128 and int.from_bytes(header[20:24], "big") == 128, path
        assert os.path.getsize(path) > 2000, "the icon should be a drawing, not a blank square"
