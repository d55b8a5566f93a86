"""A database that cannot be opened ends the process within seconds, exit status 1,
with one line on stderr naming the database and the reason: no traceback, and no
hang on a database thread left running (issue 20, item 4)."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.databases import POSTGRES_URL, postgres_unreachable
from tests.processes import COMMANDS_OPENING_THE_DATABASE, run_cli, unused_port

#: A process that has not exited by then hangs: the test fails instead of waiting.
DEADLINE_SECONDS = 20

COMMANDS = COMMANDS_OPENING_THE_DATABASE


def garbage_bytes(directory: Path) -> Path:
    path = directory / "orders.db"
    path.write_bytes(random.Random(4).randbytes(8192))
    return path


def a_text_file(directory: Path) -> Path:
    path = directory / "orders.db"
    path.write_text("orders, not a database\n")
    return path


def in_a_missing_directory(directory: Path) -> Path:
    return directory / "missing" / "orders.db"


def in_a_read_only_directory(directory: Path) -> Path:
    read_only = directory / "read-only"
    read_only.mkdir(mode=0o500)
    return read_only / "orders.db"


UNOPENABLE: dict[str, tuple[Callable[[Path], Path], str]] = {
    "garbage bytes": (garbage_bytes, "file is not a database"),
    "a text file": (a_text_file, "file is not a database"),
    "a missing directory": (in_a_missing_directory, "unable to open database file"),
    "a read-only directory": (in_a_read_only_directory, "unable to open database file"),
}


def refusal(database: str, key_dir: Path, name: str) -> str:
    """Runs the command on the database; returns its one line on stderr, having checked
    that it exited 1 within the deadline with nothing else on stderr."""
    before, after = COMMANDS[name]
    key_file = str(key_dir / "orders.key")  # the key file opens: only the database fails
    options = ["--database", database, "--secret-key-file", key_file]
    # Past the deadline, subprocess.run kills the process and raises TimeoutExpired.
    result = run_cli(*before, *options, *after, timeout=DEADLINE_SECONDS)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize("unopenable", UNOPENABLE)
def test_an_unopenable_sqlite_file_ends_the_command_with_one_line(tmp_path, name, unopenable):
    make, reason = UNOPENABLE[unopenable]
    if unopenable == "a read-only directory" and os.geteuid() == 0:
        pytest.skip("root writes into a read-only directory")
    database = str(make(tmp_path))

    line = refusal(database, tmp_path, name)

    assert database in line and reason in line


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KB tmpfs; skipped where mounting is not permitted."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def fill(disk: Path, leaving: int) -> None:
    """Fills the disk, then frees `leaving` bytes of it."""
    filler = disk / "filler"
    with contextlib.suppress(OSError), filler.open("wb", buffering=0) as file:
        while True:  # until ENOSPC
            file.write(bytes(4096))
    os.truncate(filler, filler.stat().st_size - leaving)


#: The free space each case leaves: none, or less than a new schema takes (~120 KB),
#: so that the migration fails after the connections opened.
FREE_SPACE = {"full before the start": 0, "full during the migration": 64 * 1024}


@pytest.mark.parametrize("name", ["serve", "admin migrate"])
@pytest.mark.parametrize("when", FREE_SPACE)
def test_a_full_disk_at_start_up_ends_the_command_with_one_line(tmp_path, small_disk, name, when):
    fill(small_disk, leaving=FREE_SPACE[when])
    database = str(small_disk / "orders.db")

    line = refusal(database, tmp_path, name)

    assert database in line and "database or disk is full" in line


def test_an_unreachable_postgresql_ends_the_command_with_one_line_without_its_password(
    tmp_path,
):
    port = unused_port()  # nothing listens there
    url = f"postgresql://orders:s3cret@127.0.0.1:{port}/orders"

    for name in ("serve", "admin migrate"):
        line = refusal(url, tmp_path, name)

        assert f"postgresql://orders:***@127.0.0.1:{port}/orders" in line
        assert "s3cret" not in line


def test_an_invalid_postgresql_url_ends_the_command_with_one_line(tmp_path):
    url = "postgresql://orders:s3cret@127.0.0.1:no-port/orders"

    line = refusal(url, tmp_path, "admin migrate")

    assert "s3cret" not in line and "postgresql://orders:***@" in line


def test_a_postgresql_login_refused_ends_the_command_with_one_line(tmp_path):
    if reason := postgres_unreachable():
        pytest.skip(reason)
    server = POSTGRES_URL.split("://", 1)[1].rpartition("@")[2]
    url = f"postgresql://nobody_{unused_port()}:s3cret@{server}"

    line = refusal(url, tmp_path, "admin migrate")

    assert "s3cret" not in line and "nobody_" in line
