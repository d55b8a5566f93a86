"""Load from established generators: h2load for gRPC, wrk for HTTP/1.1.

Both run closed loops (each connection sends its next request when the last
answer arrives) for a fixed time, on one thread, and report every figure we
need: requests completed, failures, and latency percentiles.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import struct
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

CONCURRENCY = 64
TIMEOUT_SECONDS = 10


@dataclass(frozen=True)
class Load:
    requests: int
    seconds: float
    failures: int
    p50_ms: float
    p99_ms: float
    p999_ms: float

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds


def require_tools() -> None:
    missing = [tool for tool in ("h2load", "wrk") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(
            f"missing load generators: {', '.join(missing)} "
            "(apt-get install nghttp2-client wrk; `make bench` does it)"
        )


def grpc_frame(message: bytes) -> bytes:
    """One uncompressed gRPC message: flag byte, big-endian length, bytes."""
    return struct.pack(">BI", 0, len(message)) + message


def h2load_grpc(
    target: str,
    rpc_path: str,
    message: bytes,
    metadata: dict[str, str],
    seconds: float | None = None,
    *,
    requests: int | None = None,
    concurrency: int = CONCURRENCY,
) -> Load:
    """Unary gRPC calls for `seconds`, or `requests` of them, one stream per
    connection (as many clients would).

    h2load sees HTTP statuses only, not grpc-status trailers: callers check
    the calls' effects (orders written) or a sample call for errors.
    """
    with tempfile.TemporaryDirectory() as scratch:
        body, log = Path(scratch, "body"), Path(scratch, "log")
        body.write_bytes(grpc_frame(message))
        headers = {"content-type": "application/grpc", "te": "trailers", **metadata}
        command = [
            "h2load", "-t", "1", "-c", str(concurrency), "-m", "1",
            *(["-n", str(requests)] if requests else ["-D", str(seconds)]),
            "-T", str(TIMEOUT_SECONDS), "-d", str(body),
            f"--log-file={log}",
            *[arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")],
            f"http://{target}{rpc_path}",
        ]  # fmt: skip
        output = _run(command)
        latencies = sorted(_h2load_latencies_us(log.read_text()))
    done, failed, elapsed = _h2load_summary(output)
    return Load(
        requests=done,
        seconds=elapsed,
        failures=failed,
        p50_ms=_percentile(latencies, 50),
        p99_ms=_percentile(latencies, 99),
        p999_ms=_percentile(latencies, 99.9),
    )


_WRK_SCRIPT = """
wrk.method = %(method)s
wrk.body = %(body)s
%(headers)s
%(unique)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %%d, "duration_us": %%d, "failures": %%d, '
    .. '"p50": %%d, "p99": %%d, "p999": %%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout + e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"""


_WRK_UNIQUE = """
local sent = 0
request = function()
  sent = sent + 1
  wrk.headers[%(header)s] = %(prefix)s .. "-" .. sent
  return wrk.format()
end
"""


def wrk_http(
    url: str,
    method: str,
    body: bytes,
    headers: dict[str, str],
    seconds: float,
    concurrency: int = CONCURRENCY,
    unique_header: str = "",
) -> Load:
    """HTTP/1.1 keep-alive requests; any non-2xx answer counts as a failure. With
    `unique_header`, every request carries that header with a value of its own
    (an Idempotency-Key per order)."""
    lines = "\n".join(
        f"wrk.headers[{_lua(name)}] = {_lua(value)}" for name, value in headers.items()
    )
    unique = _WRK_UNIQUE % {"header": _lua(unique_header), "prefix": _lua(uuid.uuid4().hex)}
    script = _WRK_SCRIPT % {
        "method": _lua(method),
        "body": _lua(body.decode()),
        "headers": lines,
        "unique": unique if unique_header else "",
    }
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as file:
        file.write(script)
        file.flush()
        output = _run(
            ["wrk", "-t", "1", "-c", str(concurrency), "-d", f"{seconds}s",
             "--timeout", f"{TIMEOUT_SECONDS}s", "-s", file.name, url]
        )  # fmt: skip
    summary = json.loads(output.strip().splitlines()[-1])
    return Load(
        requests=summary["requests"],
        seconds=summary["duration_us"] / 1e6,
        failures=summary["failures"],
        p50_ms=summary["p50"] / 1000,
        p99_ms=summary["p99"] / 1000,
        p999_ms=summary["p999"] / 1000,
    )


def _run(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def _h2load_summary(output: str) -> tuple[int, int, float]:
    """(requests done with a 2xx, requests failed, seconds) from h2load's summary."""
    elapsed = re.search(r"^finished in ([0-9.]+)(m?s),", output, re.MULTILINE)
    counts = re.search(r"^requests: (.*)$", output, re.MULTILINE)
    if not (elapsed and counts):
        raise RuntimeError(f"no summary in h2load's output: {output[-2000:]}")
    fields = {name: int(count) for count, name in re.findall(r"(\d+) (\w+)", counts[1])}
    seconds = float(elapsed[1]) / (1000 if elapsed[2] == "ms" else 1)
    failed = fields["failed"] + fields["errored"] + fields["timeout"]
    return fields["succeeded"], failed, seconds


def _h2load_latencies_us(log: str) -> list[int]:
    """The third column of h2load's log: microseconds from request to response."""
    return [int(line.split("\t")[2]) for line in log.splitlines() if line.count("\t") >= 2]


def _percentile(sorted_us: list[int], percent: float) -> float:
    if not sorted_us:
        return float("nan")
    index = min(len(sorted_us) - 1, int(len(sorted_us) * percent / 100))
    return sorted_us[index] / 1000


def median(values: list[float]) -> float:
    return statistics.median(values)


def _lua(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal here
