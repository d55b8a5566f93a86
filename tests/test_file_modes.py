"""The SQLite database and its -wal and -shm files are private (issue 19, finding 11):
made 0600 whatever the umask, and a database whose files others may read is refused
at start, as a key file is."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.databases import key_file
from tests.helpers import database_args, open_store
from tests.processes import run_cli


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_a_new_database_and_its_wal_and_shm_are_0600_under_umask_022(tmp_path):
    database = str(tmp_path / "orders.db")
    with umask(0o022):
        store = await open_store(database)
        try:
            await store.ping()  # the files exist while the store is open
            modes = {suffix: mode(database + suffix) for suffix in ("", "-wal", "-shm")}
        finally:
            await store.close()

    assert modes == {"": 0o600, "-wal": 0o600, "-shm": 0o600}
    assert mode(key_file(database)) == 0o600


def crash_leaving_a_wal(database: str) -> None:
    """A process that wrote to the database and died: its -wal and -shm stay.
    (SQLite itself gives an empty -wal or -shm the database file's mode.)"""
    died = subprocess.run(
        [sys.executable, "-c", "import os, sqlite3, sys;"
         " db = sqlite3.connect(sys.argv[1], isolation_level=None);"
         " db.execute('CREATE TABLE crash_notes (note TEXT)'); os._exit(0)", database],
        check=False,
    )  # fmt: skip
    assert died.returncode == 0
    assert os.path.getsize(database + "-wal") > 0


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
def test_a_database_file_readable_by_others_is_refused(tmp_path, suffix):
    database = str(tmp_path / "orders.db")
    assert run_cli("admin", *database_args(database), "migrate").returncode == 0
    crash_leaving_a_wal(database)
    readable = Path(database + suffix)
    readable.chmod(0o644)  # as a version before the fix left it

    result = run_cli("admin", *database_args(database), "report")

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"instant-orders: cannot open the database {database}: {readable} is readable by"
        f" others: chmod 600 {database}*"
    ]
