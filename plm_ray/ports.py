"""Loopback ports for what one machine starts itself: a local Ray's dashboard, a one-rank process group."""

from __future__ import annotations

import socket


def free_port(preferred: int = 0) -> int:
    """`preferred` if it is free on 127.0.0.1, else a port the system picks."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free port on 127.0.0.1")
