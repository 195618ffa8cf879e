"""The tables and plot of a dataset evaluation: OUT/metrics.csv (every case), OUT/summary.csv (mean and sample
standard deviation of Dice per class and prompt) and OUT/dice.png (a box plot of the same).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..files import atomic_output, write_table
from .cases import Case
from .jobs import EvaluateJob

METRIC_FIELDS = ("case", "class", "label", "prompt", "dice", "zoom_out_dice", "windows")
SUMMARY_FIELDS = ("class", "prompt", "cases", "dice_mean", "dice_sd", "zoom_out_dice_mean", "zoom_out_dice_sd")


def collect_metrics(job: EvaluateJob, cases: Sequence[Case], statuses: dict[str, str]) -> list[dict]:
    """The metric rows of every case recorded ok, in case order."""
    rows = []
    for case in cases:
        path = Path(job.output_dir) / job.metrics_name(case)
        if statuses.get(case.id) == "ok" and path.is_file():
            with open(path, newline="", encoding="utf-8") as file:
                rows += list(csv.DictReader(file))
    return rows


def summarize(rows: Sequence[dict]) -> list[dict]:
    """Mean and sample standard deviation (n-1; 0 for one case) of Dice per class and prompt."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["class"], row["prompt"]), []).append(row)

    def mean_sd(values: list[float]) -> tuple[str, str]:
        sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        return f"{float(np.mean(values)):.6f}", f"{sd:.6f}"

    summary = []
    for (name, prompt), group in groups.items():
        dice_mean, dice_sd = mean_sd([float(r["dice"]) for r in group])
        zoom_out_mean, zoom_out_sd = mean_sd([float(r["zoom_out_dice"]) for r in group])
        summary.append(
            {
                "class": name,
                "prompt": prompt,
                "cases": len(group),
                "dice_mean": dice_mean,
                "dice_sd": dice_sd,
                "zoom_out_dice_mean": zoom_out_mean,
                "zoom_out_dice_sd": zoom_out_sd,
            }
        )
    return summary


def write_box_plot(path: Path, rows: Sequence[dict]) -> None:
    """Dice per class, one box per prompt mode (matplotlib, the `eval` extra; headless Agg backend)."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("the box plot needs matplotlib: pip install 'SegVolSlicer[eval]'") from None
    classes = list(dict.fromkeys(row["class"] for row in rows))
    prompts = list(dict.fromkeys(row["prompt"] for row in rows))
    width = 0.8 / len(prompts)
    figure, axes = plt.subplots(figsize=(1.5 + max(3.0, 1.2 * len(classes) * max(1, len(prompts) / 2)), 4.0), dpi=100)
    for number, prompt in enumerate(prompts):
        values = [[float(r["dice"]) for r in rows if r["class"] == name and r["prompt"] == prompt] for name in classes]
        shown = [(position, v) for position, v in enumerate(values) if v]
        boxes = axes.boxplot(
            [v for _, v in shown],
            positions=[p + (number - (len(prompts) - 1) / 2) * width for p, _ in shown],
            widths=width * 0.9,
            patch_artist=True,
            manage_ticks=False,
            medianprops={"color": "black"},
        )
        for box in boxes["boxes"]:
            box.set_facecolor(f"C{number}")
        axes.plot([], [], color=f"C{number}", linewidth=8, label=prompt)
    slanted = len(classes) > 4
    axes.set_xticks(range(len(classes)), classes, rotation=30 if slanted else 0, ha="right" if slanted else "center")
    axes.set_ylim(0, 1)
    axes.set_ylabel("Dice")
    axes.legend(title="prompt", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)


def write_dataset_tables(job: EvaluateJob, cases: Sequence[Case], statuses: dict[str, str]) -> list[dict]:
    """OUT/metrics.csv, OUT/summary.csv and OUT/dice.png from the cases done; returns the summary rows."""
    output_dir = Path(job.output_dir)
    rows = collect_metrics(job, cases, statuses)
    write_table(output_dir / "metrics.csv", METRIC_FIELDS, rows)
    summary = summarize(rows)
    write_table(output_dir / "summary.csv", SUMMARY_FIELDS, summary)
    if rows:
        write_box_plot(output_dir / "dice.png", rows)
    return summary
