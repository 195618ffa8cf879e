"""The panel's *Test connection*: one line about a SegVol server, fetched on the worker thread.

Torch-free (the client only), no Qt and no MRML, so it runs off Slicer's GUI thread. The client (httpx, blosc2:
not bundled with Slicer) is imported only when a connection is tested, after its packages were installed.
"""

from __future__ import annotations

import importlib.util

from ..errors import SegVolError

TEST_TIMEOUT_S = 10.0  # a test that hangs longer says "unreachable"


def describe_server(url: str, api_key: str | None) -> str:
    """What the server at `url` runs, e.g. "SegVolSlicer 0.1.0 · BAAI/SegVol on cuda:0 · 3 of 4 sessions free".
    Raises SegVolError with a one-line reason (unreachable, key refused, other version)."""
    url = (url or "").strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise SegVolError("no SegVol server address: enter one like http://gpu-server:8765")
    if any(importlib.util.find_spec(name) is None for name in ("httpx", "blosc2")):
        raise SegVolError(
            "SegVol's server client is not installed yet: choose the server and press Segment to install it"
        )
    from ..client import SegVolClient

    with SegVolClient(url, (api_key or "").strip() or None, timeout_s=TEST_TIMEOUT_S) as client:
        info = client.info()  # /info needs the key too: a wrong one is refused here
    model = info.get("model", {})
    limits = info.get("limits", {})
    free = max(0, int(limits.get("max_sessions", 0)) - int(info.get("sessions", 0)))
    weights = model.get("weights") or {}  # {"name", "sha256"}; older servers sent the name alone
    weights_name = weights.get("name", "?") if isinstance(weights, dict) else weights
    return (
        f"{info.get('server', 'SegVol server')} · {weights_name} on {model.get('device', '?')} · "
        f"{free} of {limits.get('max_sessions', '?')} sessions free"
    )
