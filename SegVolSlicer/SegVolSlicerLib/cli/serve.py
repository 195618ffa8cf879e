"""`segvol serve`: SegVol loaded once (one model per device) and served over HTTP to Slicer and
`segvol segment --server`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import runtime
from ..errors import InputError
from .options import CHECKPOINT_HELP, api_key, device_choice, require_extra
from .progress import ProgressBars


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve SegVol to remote clients (Slicer, `segvol segment --server`)",
        description="Load SegVol once and serve it over HTTP (API documentation at /docs). Clients upload a volume "
        "once per session and send prompts. Several --device options (or --device cuda:all) load one model per "
        "device: each new session goes to the least-loaded device and stays there; each device runs one "
        "request at a time.",
    )
    parser.add_argument("--checkpoint", metavar="CKPT", help=CHECKPOINT_HELP)
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1, this computer only; any other needs an API key)",
    )
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    parser.add_argument(
        "--device",
        action="append",
        type=_serve_device,
        metavar="{" + ",".join(runtime.DEVICES) + ",cuda:N,cuda:all}",
        help=f"{runtime.DEVICE_HELP}, or cuda:all (every GPU); repeat for one model per device (default: auto)",
    )
    parser.add_argument(
        "--precision", default="auto", choices=runtime.PRECISIONS, help="image-encoder precision (default auto)"
    )
    parser.add_argument("--cache-dir", metavar="DIR", help="folder for downloaded weights")
    parser.add_argument(
        "--api-key-file",
        metavar="FILE",
        help="file holding the key clients must send (default: $SEGVOL_API_KEY; none: loopback only)",
    )
    parser.add_argument(
        "--max-sessions",
        type=int,
        default=8,
        help="volumes open at once (default 8); one more is refused as busy (HTTP 503)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="seconds after which a session without requests is closed (default 600)",
    )
    parser.add_argument(
        "--max-upload-mb", type=float, default=2048.0, help="largest compressed volume upload in MB (default 2048)"
    )
    parser.add_argument(
        "--max-memory-mb",
        type=float,
        help="memory held for clients at once, in MB: every session's voxels and the models' sessions; a "
        "volume that does not fit is refused (default: half of this machine's memory)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=256,
        help="connections and requests at once (default 256); more are answered 503",
    )
    parser.add_argument(
        "--session-prefix",
        metavar="PREFIX",
        help="start every session id with PREFIX- (lowercase letters and digits), so that a proxy in front of "
        "several servers routes each session to its server (deploy/nginx.conf)",
    )
    parser.set_defaults(run=run)


def _serve_device(text: str) -> str:
    return text if text == "cuda:all" else device_choice(text)


def run(args: argparse.Namespace) -> int:
    require_extra("server", "segvol serve")
    import uvicorn

    from ..engine import EngineHost, ModelChoice, SessionOptions
    from ..server import (
        ServerSettings,
        check_bind,
        create_app,
        expand_devices,
        listen,
        uvicorn_config,
        weights_identity,
    )
    from ..weights import find_weights

    key = api_key(args)
    check_bind(args.host, key)
    limits = (args.max_sessions, args.idle_timeout, args.max_upload_mb, args.max_memory_mb or 1, args.max_connections)
    if min(limits) <= 0:
        raise InputError(
            "--max-sessions, --idle-timeout, --max-upload-mb, --max-memory-mb and --max-connections must be positive"
        )
    devices = expand_devices(args.device or ["auto"])
    try:  # bound before the model loads: a port in use fails at once
        listener = listen(args.host, args.port)
    except OSError as error:
        raise InputError(
            f"cannot listen on {args.host}:{args.port} ({error.strerror}): choose another --port or --host"
        ) from None
    with listener:
        choices = [ModelChoice(args.checkpoint, device, args.precision, args.cache_dir) for device in devices]
        # each result's confidence goes with its masks: the engines keep the probabilities
        options = SessionOptions(probabilities=True)
        engines = [EngineHost(choice, max_sessions=args.max_sessions, session_options=options) for choice in choices]
        with ProgressBars() as bars:  # loaded now: a bad checkpoint fails here, and the first request is quick
            models = [engine.model(bars) for engine in engines]
        weights = None
        if engines[0].weights_path is not None:  # /info names the weights and their digest, not their path
            weights = weights_identity(args.checkpoint, find_weights(Path(engines[0].weights_path))[0])
        settings = ServerSettings(
            api_key=key,
            max_sessions=args.max_sessions,
            idle_timeout_s=args.idle_timeout,
            max_upload_mb=args.max_upload_mb,
            max_connections=args.max_connections,
            session_prefix=args.session_prefix,
            **({"max_memory_mb": args.max_memory_mb} if args.max_memory_mb else {}),
        )
        app = create_app(engines, settings, weights=weights)
        address = f"http://{args.host}:{listener.getsockname()[1]}"
        print(
            f"segvol: serving SegVol on {', '.join(str(model.device) for model in models)} at {address} "
            f"(API documentation: {address}/docs" + ("; API key required" if key else "") + ")",
            file=sys.stderr,
        )
        uvicorn.Server(uvicorn_config(app, settings, log_level="info")).run(sockets=[listener])
    return 0
