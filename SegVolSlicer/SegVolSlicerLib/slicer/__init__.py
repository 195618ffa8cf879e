"""Slicer-only modules: they import `slicer` (MRML, the application) and are not used by the CLI, the server or
the batch runner.

- `bridge`: MRML nodes <-> arrays, prompts and segments.
- `dependencies`: installing SegVol's Python packages into Slicer's Python on first use.
- `worker`: the panel's background thread and the queue it reports through.
- `connection`: the panel's *Test connection* (one line about a SegVol server).
- `checks`: the checks that the module's self-test and pytest both run.
"""
