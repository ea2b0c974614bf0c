"""PgBouncer (Debian's `pgbouncer`) in transaction mode in front of a test cluster: the pooler the
hosted functions reach the database through (Supabase's Supavisor on port 6543 pools the same way:
a server connection per transaction, nothing kept between them). No tests of its own.

    with PgBouncer(cluster.port, pool_size=2) as bouncer:
        bouncer.url("t0_abc123", user="authenticator")   # every database of the cluster, by name

Any database name is passed through to the cluster (`* =` in [databases]); logins are trusted
(the cluster trusts local logins too), so the password in a URL is ignored. PgBouncer refuses to
run as root, so as root it runs as Debian's `postgres` user, like the cluster. It is stopped by
its process id; its log is in `log()` for a failing test's message.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from stack.cluster import free_port, running_as_root

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
INSTALL_HINT = ("PgBouncer is not installed. `make setup` installs it (as root), or:\n"
                "  sudo apt-get install -y pgbouncer")
START_TIMEOUT_S = 15.0


class PgBouncer:
    """One PgBouncer process in transaction mode with `pool_size` server connections per
    (database, user); a client waits at most `query_wait_timeout` seconds for one."""

    def __init__(self, target_port: int, *, pool_size: int = 2, query_wait_timeout: int = 30,
                 max_client_conn: int = 400) -> None:
        self.target_port = target_port
        self.pool_size = pool_size
        self.query_wait_timeout = query_wait_timeout
        self.max_client_conn = max_client_conn
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="aio-pgbouncer-"))
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, database: str, user: str = "authenticator") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def log(self) -> str:
        path = self.dir / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> PgBouncer:
        assert Path(PGBOUNCER).exists(), INSTALL_HINT
        (self.dir / "users.txt").write_text('"authenticator" ""\n"postgres" ""\n')
        (self.dir / "pgbouncer.ini").write_text(f"""\
[databases]
* = host=127.0.0.1 port={self.target_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.dir / "users.txt"}
pool_mode = transaction
default_pool_size = {self.pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = {self.max_client_conn}
query_wait_timeout = {self.query_wait_timeout}
logfile = {self.dir / "pgbouncer.log"}
pidfile = {self.dir / "pgbouncer.pid"}
""")
        command = [PGBOUNCER, str(self.dir / "pgbouncer.ini")]
        if running_as_root():
            user = pwd.getpwnam("postgres")
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, user.pw_uid, user.pw_gid)
            command = ["runuser", "-u", "postgres", "--", *command]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"pgbouncer exited with {self.process.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"pgbouncer did not listen within {START_TIMEOUT_S:.0f} s:"
                                       f"\n{self.log()}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # Its own session: runuser and pgbouncer. SIGKILL, because a throwaway pooler has
            # nothing to save and 1.18 often takes 2 s to act on SIGTERM.
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
