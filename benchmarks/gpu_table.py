"""One Markdown table from the folder `gpu_check.sh` filled (its logs and JSON files).

python benchmarks/gpu_table.py gpu-check/
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def _json(folder: Path, name: str) -> dict | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _lines(folder: Path, name: str, pattern: str) -> list[str]:
    path = folder / f"{name}.log"
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text().splitlines() if re.search(pattern, line)]


def rows(folder: Path) -> list[tuple[str, str, str]]:
    table = []
    for line in _lines(folder, "floor", r"^floor on"):
        table.append(("matmul floor", line.split(": ", 1)[1], "—"))
    pipeline = _json(folder, "pipeline")
    if pipeline:
        for name in ("baseline", "ours"):
            for line in pipeline[f"{name}_passes"]:
                what, rest = line.split(": ", 1)
                table.append((f"{what}, {name}", rest, "≤ 1.3× (encoder)" if "encoder" in what else "—"))
        goals = {"first prompt": "≥ 3×", "second click": "≥ 50× CPU, ≥ 100× GPU", "categories": "≥ 10×"}
        for scenario, (base_s, base_mb) in pipeline["baseline"].items():
            ours_s, ours_mb = pipeline["ours"][scenario]
            goal = next((g for key, g in goals.items() if key in scenario), "—")
            value = f"{base_s:.2f} s → {ours_s:.3f} s (**{base_s / ours_s:.1f}×**)"
            value += f", peak {base_mb:.0f} / {ours_mb:.0f} MB"
            table.append((f"test CT: {scenario}", value, goal))
    for precision in ("fp32", "auto"):
        figures = _json(folder, f"first-name-{precision}")
        if figures:
            memory = f", peak GPU {figures['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in figures else ""
            ct = "x".join(str(n) for n in figures.get("shape_kji", [])[::-1]) or "large"
            table.append(
                (
                    f"first name on the {ct} CT ({figures['precision']})",
                    f"{figures['first_s']:.2f} s for {figures['windows']} windows "
                    f"(+ {figures['preprocess_s']:.2f} s preprocessing){memory}",
                    "≤ 2 s (GPU), ≤ 4 GB",
                )
            )
            table.append(
                (
                    f"correction on the {ct} CT ({figures['precision']})",
                    f"{figures['refine_s'] * 1000:.0f} ms (full click {figures['full_click_s']:.2f} s)",
                    "≤ 50 ms (GPU)",
                )
            )
    names = _json(folder, "ten-names")
    if names:
        for run in names["runs"]:
            ratio = run["official_s"] / run["ours_s"]
            value = f"{run['official_s']:.1f} s → {run['ours_s']:.1f} s (**{ratio:.1f}×**)"
            mode = "zoom-in" if names["zoom_in"] else "zoom-out only"
            table.append((f"{run['names']} name(s), whole process ({mode})", value, "≥ 10× (ten names)"))
        for what, seconds in names["fixed"].items():
            table.append((f"fixed cost: {what}", f"{seconds:.2f} s", "—"))
    for line in _lines(folder, "server", r"clicks/s|GPU memory|click in-process"):
        table.append(("server", line, "—"))
    status = folder / "status.txt"
    if status.is_file():
        for line in status.read_text().splitlines():
            name, code, seconds = line.split()
            table.append((f"step {name}", ("ok" if code == "0" else f"**FAILED ({code})**") + f", {seconds} s", "—"))
    return table


def main() -> None:
    folder = Path(sys.argv[1])
    device = _json(folder, "pipeline") or {}
    print(f"# Benchmarks on {device.get('device', '?')} ({folder})\n")
    print("| figure | measured | goal |\n| --- | --- | --- |")
    for figure, value, goal in rows(folder):
        print(f"| {figure} | {value} | {goal} |")


if __name__ == "__main__":
    main()
