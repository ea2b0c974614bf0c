"""The local stack's TCP ports: is one free, and if not, who holds it.

    check_free({54322: "PostgreSQL (DB_PORT)", 54330: "the sandbox (SANDBOX_PORT)"})
      → PortInUse("port 54330 is already in use (by pid 812: python -m sandbox.bitvavo …);
                   the sandbox (SANDBOX_PORT) needs it. …")

A port counts as free when a server could listen on it the way ours do (127.0.0.1, SO_REUSEADDR,
listen): a socket in TIME_WAIT left by the previous run does not block it, a listener does. The
holder is found through /proc/net/tcp{,6} (the listening socket's inode) and /proc/*/fd; when that
is not readable the message simply does not name it.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Mapping
from pathlib import Path

HOST = "127.0.0.1"
_TCP_LISTEN = "0A"


class PortInUse(RuntimeError):
    """A port the stack needs is taken. The message names the port, what needed it and the fix."""

    def __init__(self, port: int, wanted_by: str, holder: str | None) -> None:
        self.port = port
        self.wanted_by = wanted_by
        self.holder = holder
        held = f" (by {holder})" if holder else ""
        super().__init__(f"port {port} is already in use{held}; {wanted_by} needs it. Stop what "
                         f"holds it, or choose another port (e.g. `make run "
                         f"{_variable(wanted_by)}=<port>`).")


def _variable(wanted_by: str) -> str:
    """The Make variable named in `wanted_by`'s parentheses, e.g. 'the sandbox (SANDBOX_PORT)'."""
    if "(" in wanted_by and wanted_by.endswith(")"):
        return wanted_by[wanted_by.rindex("(") + 1:-1]
    return "PORT"


def is_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            probe.listen(1)
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def check_free(wanted: Mapping[int, str], host: str = HOST) -> None:
    """PortInUse for the first port (in the given order) that is taken; also when two roles were
    given the same port."""
    seen: dict[int, str] = {}
    for port, role in wanted.items():
        if port in seen:
            raise PortInUse(port, f"{role} and {seen[port]}", None)
        seen[port] = role
        if not is_free(port, host):
            raise PortInUse(port, role, holder(port))


def holder(port: int) -> str | None:
    """'pid N: command line' of the process listening on `port`, when /proc tells."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            for fd in (pid_dir / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return f"pid {pid_dir.name}: {command_line(int(pid_dir.name))}"
        except OSError:  # gone, or not ours to read
            continue
    return None


def command_line(pid: int, limit: int = 120) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    text = raw.replace(b"\0", b" ").decode(errors="replace").strip() or "?"
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _listening_inodes(port: int) -> set[str]:
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _TCP_LISTEN:
                continue
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(fields[9])
    return found
