"""Debian's nginx in front of `segvol serve` boxes on 127.0.0.1, with the project's deploy/segvol-nginx.conf (for
the several-boxes test and the latency benchmark): the config's box and listen addresses replaced by the ports
given, everything nginx writes kept in one folder, stopped by its PID."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from .processes import stop_process

# The addresses deploy/segvol-nginx.conf names: box 1, box 2, and where nginx listens.
CONFIG_ADDRESSES = ("127.0.0.1:8765", "127.0.0.1:8766", "127.0.0.1:8080")


def nginx_executable() -> str | None:
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, alive, timeout_s: float, why) -> None:
    """Until something listens on the port of 127.0.0.1; AssertionError with `why()` if `alive()` turns
    false or the time passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), 1):
                return
        except OSError:
            if not alive() or time.monotonic() > deadline:
                raise AssertionError(why()) from None
            time.sleep(0.1)


@contextlib.contextmanager
def run_nginx(config: Path, box_ports: tuple[int, int], folder: Path) -> Iterator[int]:
    """nginx in the foreground with `config`, its two boxes on `box_ports`; yields the port it listens on."""
    nginx = nginx_executable()
    if nginx is None:
        raise FileNotFoundError("nginx is not installed (Debian: apt-get install nginx-light)")
    listen = free_port()
    text = config.read_text(encoding="utf-8")
    for address, port in zip(CONFIG_ADDRESSES, (*box_ports, listen)):
        text = text.replace(f"{address};", f"127.0.0.1:{port};")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "segvol.conf").write_text(text, encoding="utf-8")
    temp = ""
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (folder / kind).mkdir(exist_ok=True)
        temp += f"{kind}_temp_path {folder / kind};\n"
    main = folder / "nginx.conf"
    main.write_text(
        f"worker_processes 1;\npid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'} warn;\n"
        f"events {{ worker_connections 512; }}\nhttp {{\naccess_log {folder / 'access.log'};\n{temp}"
        f"include {folder / 'segvol.conf'};\n}}\n",
        encoding="utf-8",
    )
    check = subprocess.run([nginx, "-t", "-p", str(folder), "-c", str(main)], capture_output=True, text=True)
    if check.returncode != 0:
        raise AssertionError(f"nginx refuses the config: {check.stderr}")
    process = subprocess.Popen([nginx, "-p", str(folder), "-c", str(main), "-g", "daemon off;"])
    try:
        log = folder / "error.log"
        wait_for_port(
            listen, lambda: process.poll() is None, 30, lambda: log.read_text(encoding="utf-8") if log.exists() else ""
        )
        yield listen
    finally:
        stop_process(process)
