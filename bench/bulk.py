"""The bulk-order figures alone (`make bench-bulk`): a 10,000-unit order placed, and
fulfilled from one restock of 10,000 codes, on a fresh SQLite database; the same
scenario runs inside `make bench`."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.run import Bench, Options, bulk_order


def main() -> None:
    parser = argparse.ArgumentParser(description="Time a 10,000-unit bulk order.")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    options = Options(args.runs, seconds=0, warmup_seconds=0, stored_orders=0, memory_orders=0)
    with tempfile.TemporaryDirectory(prefix="instant-orders-bench-") as workdir:
        bench = Bench(Path(workdir), options)
        try:
            bench.prepare()
            bench.start_server()
            bench.sign_in()
            bulk_order(bench)
        finally:
            bench.stop()


if __name__ == "__main__":
    main()
