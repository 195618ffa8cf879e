"""Slicer-only modules: they import `slicer` (MRML, the application) and are not used by the CLI, the server or
the batch runner.

- `bridge`: MRML nodes <-> arrays, prompts and segments.
- `dependencies`: installing SegVol's Python packages into Slicer's Python on first use.
- `worker`: the panel's background thread and the queue it reports through.
- `connection`: the panel's *Test connection* (one line about a SegVol server).
- `checks`: the checks that the module's self-test and pytest both run.
- the panel's sections, each built by the Widget with its `ui` and logic: `jobs` (the run loop, side jobs,
  abandon), `installs` (the first-use install), `run_on` (this computer or a server, weights, Test connection),
  `prompt_tools` (name completion, placing shortcuts, box re-placing, auto-update), `editor` (the Segment
  Editor's undo history), `results_section` (statistics table, Export DICOM SEG).
"""
