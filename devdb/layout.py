"""Where a cluster lives on disk, the record of it in the data dir, and the checks on both.

As root the cluster lives in ``/var/lib/jobtrail/clusters/<random id>/`` (owned by
``jobtrail-pg``, 0700) with ``pgdata/``, the unix-socket directory ``run/`` and
``postgres.log`` inside.  As an ordinary user ``<data_dir>/pg`` is the pgdata (0700),
``<data_dir>/pg-run`` (0700) the socket directory - or a short private ``$TMPDIR/jtpg-*``
directory when the socket path would exceed the 107-byte unix-socket limit - and
``<data_dir>/pg.log`` the server log.

``<data_dir>/embedded-pg.json`` (0600, owned by the current user, never followed through a
symlink) records which cluster belongs to the data dir, so a second start reuses it.  A
record is trusted only as far as it is validated: in root mode every path is derived from
the recorded cluster id, so a tampered record cannot steer root at an arbitrary path.
Directories that exist are checked, never chmod-ed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from devdb.binaries import (
    PG_OS_USER,
    SYSTEM_ROOT,
    check_root_owned,
    ensure_os_user,
    installed_major_version,
    is_root,
    mkdir_system,
)
from devdb.errors import EmbeddedPostgresError

#: Root mode: one directory per cluster, named by a random id.
CLUSTERS_ROOT = SYSTEM_ROOT / "clusters"
#: Database role and database in the returned DSN.
DB_USER = "postgres"
DB_NAME = "postgres"
PORT = 5432
SOCKET_NAME = f".s.PGSQL.{PORT}"

RECORD_NAME = "embedded-pg.json"
_RECORD_FORMAT = 1
_SOCKET_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_CLUSTER_ID_RE = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True)
class Layout:
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


def socket_path_fits(socket_dir: Path) -> bool:
    return len(os.fsencode(str(socket_dir / SOCKET_NAME))) <= _SOCKET_PATH_MAX


def private_dir_ok(path: Path) -> bool:
    """Existing directory (not a symlink) owned by us and closed to group and others."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def _make_short_socket_dir() -> Path:
    for base in (tempfile.gettempdir(), "/tmp"):  # noqa: S108 - mkdtemp makes it private
        candidate_len = len(os.fsencode(base)) + len("/jtpg-12345678/") + len(SOCKET_NAME)
        if candidate_len <= _SOCKET_PATH_MAX:
            return Path(tempfile.mkdtemp(prefix="jtpg-", dir=base))  # mode 0700
    raise EmbeddedPostgresError("no temporary directory short enough for a unix socket")


def _system_layout(cluster_dir: Path) -> Layout:
    return Layout(
        system=True,
        cluster_dir=cluster_dir,
        pgdata=cluster_dir / "pgdata",
        socket_dir=cluster_dir / "run",
        log_file=cluster_dir / "postgres.log",
        private_socket_dir=False,
    )


def check_major_version(layout: Layout) -> None:
    """Refuse a cluster made by another PostgreSQL major version than the installed one."""
    major = installed_major_version()
    try:
        found = (layout.pgdata / "PG_VERSION").read_text().strip()
    except OSError as exc:
        raise EmbeddedPostgresError(f"cannot read {layout.pgdata}/PG_VERSION: {exc}") from exc
    if found != major:
        raise EmbeddedPostgresError(
            f"cluster {layout.pgdata} was created by PostgreSQL {found}, but the installed "
            f"binaries are PostgreSQL {major}; dump and restore it, or destroy it"
        )


class DataDir:
    """One jobtrail data directory: its cluster record and the layout that record names."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.record_path = path / RECORD_NAME

    # --- record -------------------------------------------------------------

    def load_layout(self) -> Layout | None:
        """The recorded layout, validated; ``None`` if there is no record."""
        try:
            fd = os.open(self.record_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise EmbeddedPostgresError(f"cannot read {self.record_path}: {exc}") from exc
        with os.fdopen(fd, "rb") as fh:
            if os.fstat(fh.fileno()).st_uid != os.geteuid():
                raise EmbeddedPostgresError(
                    f"{self.record_path} is owned by another user; it was created by a "
                    "different account (root vs. non-root?) - refusing to use it"
                )
            try:
                raw = json.loads(fh.read())
            except ValueError as exc:
                raise EmbeddedPostgresError(f"corrupt {self.record_path}: {exc}") from exc
        return self._layout_from_record(raw)

    def _layout_from_record(self, raw: Any) -> Layout:
        bad = EmbeddedPostgresError(f"unexpected contents in {self.record_path}")
        if not isinstance(raw, dict) or raw.get("format") != _RECORD_FORMAT:
            raise bad
        mode = raw.get("mode")
        if mode == "system":
            if not is_root():
                raise EmbeddedPostgresError(
                    f"{self.record_path} describes a cluster run as {PG_OS_USER!r}; "
                    "start it as root"
                )
            cluster_dir = Path(str(raw.get("cluster_dir")))
            # Derive everything from the validated id so a tampered record cannot steer
            # root (e.g. destroy() -> rmtree) at an arbitrary path.
            if cluster_dir.parent != CLUSTERS_ROOT or not _CLUSTER_ID_RE.match(cluster_dir.name):
                raise bad
            return _system_layout(cluster_dir)
        if mode == "user":
            if is_root():
                raise EmbeddedPostgresError(
                    f"{self.record_path} describes a cluster of an unprivileged user; "
                    "root cannot run it (PostgreSQL refuses to run as root)"
                )
            socket_dir = Path(str(raw.get("socket_dir")))
            private = raw.get("private_socket_dir") is True
            expected = self.path / "pg-run"
            if not socket_dir.is_absolute() or (not private and socket_dir != expected):
                raise bad
            if private and not socket_dir.name.startswith("jtpg-"):
                raise bad
            return self._user_layout(socket_dir, private)
        raise bad

    def _write_record(self, layout: Layout) -> None:
        tmp = self.path / f".{RECORD_NAME}.{secrets.token_hex(4)}.tmp"
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
            os.replace(tmp, self.record_path)
        finally:
            tmp.unlink(missing_ok=True)

    # --- layouts ------------------------------------------------------------

    def _user_layout(self, socket_dir: Path, private: bool) -> Layout:
        pgdata = self.path / "pg"
        return Layout(
            system=False,
            cluster_dir=pgdata,
            pgdata=pgdata,
            socket_dir=socket_dir,
            log_file=self.path / "pg.log",
            private_socket_dir=private,
        )

    def create_layout(self) -> Layout:
        """Choose and create a new cluster's directories, and record them."""
        if is_root():
            entry = ensure_os_user()
            mkdir_system(CLUSTERS_ROOT, 0o711)
            cluster_dir = CLUSTERS_ROOT / secrets.token_hex(8)
            layout = _system_layout(cluster_dir)
            for d in (cluster_dir, layout.pgdata, layout.socket_dir):
                os.mkdir(d, 0o700)
                os.chown(d, entry.pw_uid, entry.pw_gid)
                os.chmod(d, 0o700)
        else:
            run_dir = self.path / "pg-run"
            if socket_path_fits(run_dir):
                layout = self._user_layout(run_dir, private=False)
            else:
                layout = self._user_layout(_make_short_socket_dir(), private=True)
        self._write_record(layout)
        return layout

    def check_layout(self, layout: Layout) -> None:
        """Verify ownership/permissions of an existing cluster; create user-mode dirs."""
        if layout.system:
            entry = ensure_os_user()
            check_root_owned(CLUSTERS_ROOT)
            try:
                st = os.lstat(layout.cluster_dir)
            except FileNotFoundError:
                raise EmbeddedPostgresError(
                    f"cluster directory {layout.cluster_dir} recorded in {self.record_path} "
                    f"is missing; remove {self.record_path} to create a fresh cluster"
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

    def ensure_socket_dir(self, layout: Layout) -> Layout:
        """User mode: (re)create the private socket directory before a start."""
        if layout.system:
            return layout
        if not layout.private_socket_dir:
            with contextlib.suppress(FileExistsError):
                os.mkdir(layout.socket_dir, 0o700)
            if not private_dir_ok(layout.socket_dir):
                raise EmbeddedPostgresError(
                    f"socket directory {layout.socket_dir} must be a directory owned by you "
                    "with no group/other permissions"
                )
            return layout
        if private_dir_ok(layout.socket_dir):
            return layout
        # e.g. /tmp was cleaned after a reboot: make a new one and record it
        layout = self._user_layout(_make_short_socket_dir(), private=True)
        self._write_record(layout)
        return layout

    def remove_cluster(self, layout: Layout) -> None:
        """Delete a stopped cluster's files and then the record."""
        if layout.system:
            shutil.rmtree(layout.cluster_dir, ignore_errors=False)
        else:
            for path in (layout.pgdata, self.path / "pg-run"):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
            if layout.private_socket_dir and private_dir_ok(layout.socket_dir):
                shutil.rmtree(layout.socket_dir)
            with contextlib.suppress(FileNotFoundError):
                layout.log_file.unlink()
        self.record_path.unlink(missing_ok=True)
