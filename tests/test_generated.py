"""generated/ is exactly what `make proto` produces from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def files_under(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_generated_code_is_current(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "protos/generate.py"), str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = files_under(tmp_path)
    committed = files_under(ROOT / "generated")

    assert sorted(committed) == sorted(fresh), "run `make proto`: files differ"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert stale == [], f"run `make proto`: {stale} are stale"
