"""What a command tells the user on stderr while it runs: tqdm bars per target and stage, the case bar of a
dataset run, warnings; and the closing line of a dataset run."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from ..reporting import Reporter


class ProgressBars(Reporter):
    """A tqdm bar per stage of each target on stderr: the zoom-out pass, then the zoom-in windows; notices
    (the weights loaded, the CPU fallback) as lines. A context manager, so that the last bar is closed even
    when the run fails."""

    def __init__(self, labels: Sequence[str] = ("",)):
        super().__init__()
        self.labels, self.label, self.bar, self.stage = list(labels), labels[0] if labels else "", None, None

    def progress(self, stage: str, done: int, total: int) -> None:
        from tqdm.auto import tqdm

        if stage == "target":
            self.close()
            self.label = self.labels[done]
            return
        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(
                total=total,
                desc=f"{self.label} {stage}".strip(),
                unit="window" if stage == "zoom-in" else "B" if stage == "download" else "pass",
                unit_scale=stage == "download",
                file=sys.stderr,
                leave=False,
            )
        self.bar.update(done - self.bar.n)

    def notice(self, message: str) -> None:
        self.close()
        print(f"segvol: {message}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.stage = None, None

    def __enter__(self) -> ProgressBars:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class CaseBar(Reporter):
    """The case count and ETA of a dataset run on stderr (tqdm), its notices (failed cases) as lines. The bar
    starts when the model is loaded (the first progress), so the ETA counts cases only."""

    def __init__(self):
        super().__init__()
        self.bar = None

    def progress(self, stage: str, done: int, total: int) -> None:
        from tqdm.auto import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, initial=done, desc="cases", unit="case", file=sys.stderr, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def notice(self, message: str) -> None:
        if self.bar is None:
            print(f"segvol: {message}", file=sys.stderr)
        else:
            self.bar.write(f"segvol: {message}", file=sys.stderr)

    def __enter__(self) -> CaseBar:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.bar is not None:
            self.bar.close()


def warn(messages: Sequence[str]) -> None:
    for message in messages:
        print(f"segvol: warning: {message}", file=sys.stderr)


def print_run(summary, total: int, output_dir: Path) -> int:
    """The closing line of a dataset run; its exit code (1 when a case failed)."""
    print(
        f"{summary.ok} case(s) done, {len(summary.failed)} failed, {summary.done_before} skipped (done before) "
        f"of {total}; see {output_dir / 'results.csv'}"
    )
    return 1 if summary.failed else 0
