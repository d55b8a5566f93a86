"""The processes under test, and what they cost: CPU seconds and peak RSS from /proc."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            tail = self.log.read_text()[-3000:]
            raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{tail}")


def start(name: str, workdir: Path, *args: str, env: dict[str, str] | None = None) -> Process:
    """Starts `python ARGS` from the repository root; its output goes to NAME.log."""
    log = workdir / f"{name}.log"
    popen = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
        [sys.executable, *args],
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "INSTANT_ORDERS_LOG_LEVEL": "WARNING", **(env or {})},
    )
    return Process(name, popen, log)


def wait_for_grpc(process: Process, target: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        while True:
            process.check_alive()
            try:
                grpc.channel_ready_future(channel).result(timeout=0.5)
                return
            except grpc.FutureTimeoutError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{process.name} not ready on {target}") from None


def wait_for_http(process: Process, url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        process.check_alive()
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url, timeout=1) as response,  # noqa: S310 - our own URL
        ):
            if response.status == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{process.name} not ready at {url}")
        time.sleep(0.1)


@dataclass
class Cost:
    """CPU seconds used and the largest peak RSS (MiB) of the measured processes, and
    the CPU seconds of each of their roles: the HTTP side (the gateway, or a bare
    forwarder) and the gRPC side (the server, or the ceiling's echo)."""

    cpu_seconds: float = 0.0
    peak_rss_mib: float = 0.0
    gateway_cpu_seconds: float = 0.0
    server_cpu_seconds: float = 0.0


def is_http_side(process: Process) -> bool:
    return process.name.endswith("gateway") or process.name == "forwarder"


@dataclass
class Meter:
    """Measures processes over a block: CPU from /proc/PID/stat, peak RSS from
    VmHWM after resetting it through /proc/PID/clear_refs."""

    processes: list[Process]

    @contextlib.contextmanager
    def measuring(self) -> Iterator[Cost]:
        for process in self.processes:
            _reset_peak_rss(process.pid)
        before = {process.name: _cpu_seconds(process.pid) for process in self.processes}
        cost = Cost()
        yield cost
        for process in self.processes:
            used = _cpu_seconds(process.pid) - before[process.name]
            cost.cpu_seconds += used
            if is_http_side(process):
                cost.gateway_cpu_seconds += used
            else:
                cost.server_cpu_seconds += used
        cost.peak_rss_mib = sum(rss_mib(process.pid, "VmHWM") for process in self.processes)


def _cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def _reset_peak_rss(pid: int) -> None:
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def rss_mib(pid: int, which: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(which + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")
