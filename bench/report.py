"""The bench's results: one line per scenario as it finishes, then a table, a JSON
file and a picture under bench/results/."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.load import median


@dataclass
class Scenario:
    """A named load, measured `runs` times: each run's load and service cost."""

    name: str
    ceiling: str | None
    runs: list[dict[str, float]]

    def median(self, key: str) -> float:
        return median([run[key] for run in self.runs])


HEADER = (
    "| scenario | req/s | vs ceiling | p50 ms | p99 ms | p99.9 ms | p99 vs ceiling "
    "| CPU % | gateway CPU µs/req | server CPU µs/req | peak RSS MiB |"
    "\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def line(scenario: Scenario, ceiling: Scenario | None) -> str:
    return "| " + " | ".join(_cells(scenario.name, _medians(scenario), ceiling)) + " |"


def _medians(scenario: Scenario) -> dict[str, float]:
    keys = (
        "throughput", "p50_ms", "p99_ms", "p999_ms", "cpu_percent", "gateway_cpu_us",
        "server_cpu_us", "peak_rss_mib",
    )  # fmt: skip
    return {key: scenario.median(key) for key in keys}


def _cells(name: str, medians: dict[str, float], ceiling: Scenario | None) -> list[str]:
    throughput_ratio = p99_ratio = ""
    if ceiling is not None:
        throughput_ratio = f"{medians['throughput'] / ceiling.median('throughput'):.0%}"
        p99_ratio = f"{medians['p99_ms'] / ceiling.median('p99_ms'):.2f}x"
    return [
        name,
        f"{medians['throughput']:,.0f}",
        throughput_ratio,
        f"{medians['p50_ms']:.1f}",
        f"{medians['p99_ms']:.1f}",
        f"{medians['p999_ms']:.1f}",
        p99_ratio,
        f"{medians['cpu_percent']:.0f}",
        f"{medians['gateway_cpu_us']:.0f}" if medians["gateway_cpu_us"] else "",
        f"{medians['server_cpu_us']:.0f}",
        f"{medians['peak_rss_mib']:.0f}",
    ]


def table(scenarios: dict[str, Scenario]) -> str:
    rows = [line(s, scenarios.get(s.ceiling or "")) for s in scenarios.values()]
    return "\n".join([HEADER, *rows])


#: Issue 17's targets: (what, scenario, its ceiling, key, at least or at most, bound).
_REST = "REST POST /v2/orders/instant, in stock"
#: The bare forwarder's scenario: the REST framework alone (bench/forwarder.py).
FORWARDER = "REST bare forwarder: POST /v2/orders/instant"
_GRPC, _ECHO = "gRPC CreateInstantOrder, in stock", "gRPC ceiling: CreateInstantOrder"
TARGETS = (
    ("REST in-stock throughput vs the bare forwarder", _REST, FORWARDER, "throughput", ">=", 0.6),
    ("REST in-stock order p99 vs the bare forwarder", _REST, FORWARDER, "p99_ms", "<=", 2.0),
    ("gRPC in-stock order throughput vs the echo", _GRPC, _ECHO, "throughput", ">=", 0.6),
    ("gateway CPU per order vs the bare forwarder", _REST, FORWARDER, "gateway_cpu_us", "<=", 1.3),
    ("server CPU per order vs the echo", _GRPC, _ECHO, "server_cpu_us", "<=", 2.0),
)  # fmt: skip


def targets(scenarios: dict[str, Scenario]) -> list[dict[str, Any]]:
    """Each target of issue 17 with the ratio measured in this run."""
    measured = []
    for what, name, ceiling, key, sense, bound in TARGETS:
        if name not in scenarios or ceiling not in scenarios:
            continue
        ratio = scenarios[name].median(key) / scenarios[ceiling].median(key)
        met = ratio >= bound if sense == ">=" else ratio <= bound
        measured.append({"target": f"{what} {sense} {bound}", "ratio": ratio, "met": met})
    return measured


def save(results: dict[str, Any], scenarios: dict[str, Scenario], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    summary = table(scenarios)
    results["table"] = summary
    results["targets"] = targets(scenarios)
    (directory / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(scenarios, directory / "bench.png")
    print()
    print(summary)
    backlog, memory = results["backlog"], results["memory"]
    print(
        f"\nbacklog of {backlog['orders']:,}: {backlog['median_seconds']:.2f} s;"
        f" server RSS growth from 100k to 200k orders: {100 * memory['growth']:+.1f}%"
    )
    for target in results["targets"]:
        verdict = "met" if target["met"] else "NOT met"
        print(f"{target['target']}: {target['ratio']:.2f} ({verdict})")
    print(f"results: {directory / 'results.json'}, picture: {directory / 'bench.png'}")


def plot(scenarios: dict[str, Scenario], path: Path) -> None:
    """Throughput and p99 per scenario; ceilings grey, the service blue."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(scenarios)
    colors = ["#999999" if "ceiling" in name else "#1f77b4" for name in names]
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 0.45 * len(names) + 1.5), sharey=True)
    positions = range(len(names))
    left.barh(positions, [scenarios[n].median("throughput") for n in names], color=colors)
    left.set_xlabel("requests/s (median of runs)")
    right.barh(positions, [scenarios[n].median("p99_ms") for n in names], color=colors)
    right.set_xlabel("p99 latency, ms")
    left.set_yticks(list(positions), names, fontsize=8)
    left.invert_yaxis()
    figure.suptitle("instant-orders beside its ceilings (grey: the framework alone)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
