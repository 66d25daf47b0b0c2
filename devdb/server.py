"""``EmbeddedPostgres``: the life cycle of one data dir's cluster, driving initdb and pg_ctl.

Creating the cluster (``initdb``), starting it, reusing a running one, stopping it and
deleting throw-away clusters.  Concurrent operations on the same data dir are serialised with
``flock`` on ``<data_dir>/embedded-pg.lock``.  The server is started with ``-h ''`` (no TCP
listener: authentication is ``trust``, so one would let any local user become superuser) and
``unix_socket_permissions=0700``.  As root, ``initdb`` and ``pg_ctl`` run as ``jobtrail-pg``
without root's supplementary groups.  A postmaster that was killed but not yet reaped (a
zombie) is waited for, since PostgreSQL would take it for a running server.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shlex
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from devdb.binaries import PG_OS_USER, bin_dir_for_use, server_os_user, user_bin_dir
from devdb.errors import EmbeddedPostgresError
from devdb.layout import (
    DB_USER,
    PORT,
    SOCKET_NAME,
    DataDir,
    Layout,
    check_major_version,
    socket_path_fits,
)

MAX_CONNECTIONS = 200
LOCK_NAME = "embedded-pg.lock"
_LOCK_TIMEOUT_S = 300.0
_INITDB_TIMEOUT_S = 300.0
_PG_CTL_WAIT_S = 120
_LOG_TAIL_LINES = 40
_ZOMBIE_WAIT_S = 90.0


def _read_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """Last lines of a log file; never follows a symlink (we may be root)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        return f"<server log {path} unavailable: {exc.strerror}>"
    with os.fdopen(fd, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - 16384))
        data = fh.read().decode("utf-8", errors="replace")
    return "\n".join(data.splitlines()[-lines:])


class EmbeddedPostgres:
    """A local PostgreSQL cluster belonging to one jobtrail data directory.

    ``throwaway=True`` is for test-suite databases: ``initdb --no-sync`` and ``fsync=off``;
    call :meth:`destroy` afterwards.  All methods are blocking (they run ``initdb`` /
    ``pg_ctl``); call them from a thread when inside an event loop.
    """

    def __init__(self, data_dir: Path, *, throwaway: bool = False) -> None:
        self.data_dir = Path(os.path.abspath(data_dir))
        self.throwaway = throwaway
        self._dir = DataDir(self.data_dir)
        self._lock_path = self.data_dir / LOCK_NAME

    # ----------------------------------------------------------------- public API

    def start(self) -> str:
        """Create the cluster if needed, start it unless running; return its DSN."""
        with self._locked():
            layout = self._dir.load_layout()
            if layout is None:
                layout = self._dir.create_layout()
            bin_dir = bin_dir_for_use()
            self._dir.check_layout(layout)
            if not (layout.pgdata / "PG_VERSION").exists():
                self._initdb(layout, bin_dir)
            check_major_version(layout)
            if self._postmaster_alive(layout):
                if not (layout.socket_dir / SOCKET_NAME).exists():
                    raise EmbeddedPostgresError(
                        f"a server is running on {layout.pgdata} but its socket "
                        f"{layout.socket_dir / SOCKET_NAME} is missing; stop it first"
                    )
                return layout.dsn()
            self._wait_for_reaping(layout)
            layout = self._dir.ensure_socket_dir(layout)
            self._pg_ctl_start(layout, bin_dir)
            return layout.dsn()

    def stop(self) -> None:
        """``pg_ctl stop -m fast``; does nothing if the server is not running."""
        if not self._dir.record_path.exists():
            return  # never created here; don't create the data dir just to lock it
        with self._locked():
            layout = self._dir.load_layout()
            if layout is not None:
                self._stop(layout)

    def is_running(self) -> bool:
        """Whether this data dir's postmaster process is alive."""
        layout = self._dir.load_layout()
        return layout is not None and self._postmaster_alive(layout)

    def url(self) -> str | None:
        """The DSN if the cluster has been initialised (running or not), else ``None``."""
        layout = self._dir.load_layout()
        if layout is None or not (layout.pgdata / "PG_VERSION").exists():
            return None
        return layout.dsn()

    def destroy(self) -> None:
        """Stop the server and delete the cluster and its record (throw-away clusters)."""
        if not self._dir.record_path.exists():
            return
        with self._locked():
            layout = self._dir.load_layout()
            if layout is None:
                return
            self._stop(layout)
            self._dir.remove_cluster(layout)

    # Informational paths (None until the cluster has been created here).

    @property
    def bin_dir(self) -> Path:
        """Directory with ``psql``, ``pg_dump``, ... usable by the current user."""
        return user_bin_dir()

    @property
    def cluster_dir(self) -> Path | None:
        return self._recorded(lambda layout: layout.cluster_dir)

    @property
    def pgdata(self) -> Path | None:
        return self._recorded(lambda layout: layout.pgdata)

    @property
    def socket_dir(self) -> Path | None:
        return self._recorded(lambda layout: layout.socket_dir)

    def _recorded(self, pick: Callable[[Layout], Path]) -> Path | None:
        layout = self._dir.load_layout()
        return None if layout is None else pick(layout)

    # ----------------------------------------------------------------- internals

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + _LOCK_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise EmbeddedPostgresError(
                            f"timed out waiting for the lock {self._lock_path}"
                        ) from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # releases the lock

    # --- processes ------------------------------------------------------------

    def _run(self, layout: Layout, argv: list[str], *, timeout: float) -> str:
        entry = server_os_user()
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C", "LANG": "C"}
        if "TZ" in os.environ:
            env["TZ"] = os.environ["TZ"]
        cwd = layout.cluster_dir if layout.system else self.data_dir
        with tempfile.TemporaryFile() as out:
            try:
                proc = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=cwd,
                    env=env,
                    timeout=timeout,
                    check=False,
                    user=None if entry is None else entry.pw_uid,
                    group=None if entry is None else entry.pw_gid,
                    extra_groups=None if entry is None else [],  # drop root's groups
                    umask=0o077,
                )
                failure = None if proc.returncode == 0 else f"exit status {proc.returncode}"
            except subprocess.TimeoutExpired:
                failure = f"timed out after {timeout:.0f}s"
            out.seek(0)
            output = out.read().decode("utf-8", errors="replace").strip()
        if failure is not None:
            raise EmbeddedPostgresError(
                f"{Path(argv[0]).name} failed ({failure}): {shlex.join(argv)}\n"
                f"--- output ---\n{output}\n"
                f"--- tail of server log {layout.log_file} ---\n{_read_tail(layout.log_file)}"
            )
        return output

    def _initdb(self, layout: Layout, bin_dir: Path) -> None:
        argv = [
            str(bin_dir / "initdb"),
            "-D",
            str(layout.pgdata),
            "--auth=trust",
            "--auth-host=reject",  # no TCP listener anyway; belt and braces
            "--encoding=UTF8",
            "--locale=C",
            "-U",
            DB_USER,
            "--no-instructions",
        ]
        if self.throwaway:
            argv.append("--no-sync")
        self._run(layout, argv, timeout=_INITDB_TIMEOUT_S)

    def _pg_ctl_start(self, layout: Layout, bin_dir: Path) -> None:
        if not socket_path_fits(layout.socket_dir):
            raise EmbeddedPostgresError(
                f"unix socket path {layout.socket_dir / SOCKET_NAME} is too long"
            )
        settings = [
            f"max_connections={MAX_CONNECTIONS}",
            "unix_socket_permissions=0700",
        ]
        if self.throwaway:
            settings.append("fsync=off")
        # pg_ctl hands -o to /bin/sh, hence the quoting.
        opts = ["-h", "''", "-k", shlex.quote(str(layout.socket_dir)), "-p", str(PORT)]
        for setting in settings:
            opts += ["-c", shlex.quote(setting)]
        argv = [
            str(bin_dir / "pg_ctl"),
            "-w",
            "-t",
            str(_PG_CTL_WAIT_S),
            "-D",
            str(layout.pgdata),
            "-l",
            str(layout.log_file),
            "-o",
            " ".join(opts),
            "start",
        ]
        self._run(layout, argv, timeout=_PG_CTL_WAIT_S + 30)

    def _stop(self, layout: Layout) -> None:
        if not self._postmaster_alive(layout):
            return
        argv = [
            str(bin_dir_for_use() / "pg_ctl"),
            "-w",
            "-t",
            str(_PG_CTL_WAIT_S),
            "-D",
            str(layout.pgdata),
            "-m",
            "fast",
            "stop",
        ]
        try:
            self._run(layout, argv, timeout=_PG_CTL_WAIT_S + 30)
        except EmbeddedPostgresError:
            if self._postmaster_alive(layout):
                raise

    def _postmaster_alive(self, layout: Layout) -> bool:
        return self._postmaster_state(layout)[0] == "alive"

    def _postmaster_state(self, layout: Layout) -> tuple[str, int]:
        """("alive" | "zombie" | "none", pid) for the process named in postmaster.pid.

        "zombie": that postgres process died (e.g. was killed) but its parent - after
        pg_ctl exits that is PID 1 - has not reaped it yet.  PostgreSQL's own stale-lock
        check treats a zombie as a running postmaster and refuses to start.
        """
        try:
            first = (layout.pgdata / "postmaster.pid").read_text().split("\n", 1)[0]
        except (FileNotFoundError, NotADirectoryError):
            return "none", 0
        except OSError as exc:
            raise EmbeddedPostgresError(f"cannot read {layout.pgdata}/postmaster.pid") from exc
        try:
            pid = int(first.strip())
        except ValueError:
            return "none", 0
        if pid <= 0:
            return "none", 0
        proc = Path(f"/proc/{pid}")
        try:
            owner = proc.stat().st_uid
            comm = (proc / "comm").read_text().strip()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            expected_uid = pwd.getpwnam(PG_OS_USER).pw_uid if layout.system else os.geteuid()
        except (OSError, IndexError, KeyError):
            return "none", pid
        if owner != expected_uid or comm != "postgres":
            return "none", pid  # the pid has been reused by an unrelated process
        return ("zombie" if state in ("Z", "X") else "alive"), pid

    def _wait_for_reaping(self, layout: Layout) -> None:
        deadline = time.monotonic() + _ZOMBIE_WAIT_S
        state, pid = self._postmaster_state(layout)
        while state == "zombie":
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(
                    f"the previous server of {layout.pgdata} (pid {pid}) died but is still a "
                    "zombie process nobody reaped, so PostgreSQL would refuse to start; "
                    "retry later"
                )
            time.sleep(0.2)
            state, pid = self._postmaster_state(layout)
