"""The recording reporter every test uses (one, for all faces): what the engine reported, and Cancel pressed at a
chosen report."""

from SegVolSlicerLib.reporting import Reporter


class RecordingReporter(Reporter):
    """Records `events` ((stage, done, total) of each progress report) and `notices`; with `cancel_at`, sets its
    own cancel at the `cancel_after`-th report of that stage (the user pressing Cancel then)."""

    def __init__(self, cancel_at: str | None = None, cancel_after: int = 1):
        super().__init__()
        self.events, self.notices = [], []
        self.cancel_at, self.cancel_after = cancel_at, cancel_after

    @property
    def stages(self) -> list[str]:
        return [stage for stage, _, _ in self.events]

    def progress(self, stage, done, total):
        self.events.append((stage, done, total))
        if stage == self.cancel_at and self.stages.count(stage) >= self.cancel_after:
            self.cancel.set()

    def notice(self, message):
        self.notices.append(message)
