"""Prometheus metrics of the CAS (a private registry, scraped at /metrics).

With several worker processes (``veil cas serve --workers N``) counters and histograms
live in files of a directory every worker shares (prometheus_client's multiprocess mode),
and a scrape answered by any worker sums them all.
"""

import os
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def use_multiprocess_metrics(directory: str) -> None:
    """Keep the metrics created from now on (in this process and its forks) in files
    under ``directory``. prometheus_client otherwise decides this when it is imported."""
    os.environ[_MULTIPROC_ENV] = directory
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


class _State(Collector):
    """Gauges read when scraped: the number of sessions and whether sim evidence counts."""

    def __init__(self, sessions: Callable[[], int], sim: bool) -> None:
        self._sessions = sessions
        self._sim = sim

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("veil_sessions", "Sessions stored", value=float(self._sessions()))
        yield GaugeMetricFamily(
            "veil_sim_mode", "1 when this CAS accepts sim evidence", value=1.0 if self._sim else 0.0
        )


class CasMetrics:
    def __init__(self, sessions: Callable[[], int], sim: bool) -> None:
        self.registry = CollectorRegistry()
        self.attestations = Counter(
            "veil_attestations", "Attestation decisions", ["result"], registry=self.registry
        )
        self.requests = Histogram(
            "veil_request_seconds",
            "Time to answer a request",
            ["route", "status"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self._state = _State(sessions, sim)
        self._shared = os.environ.get(_MULTIPROC_ENV)
        if not self._shared:
            self.registry.register(self._state)

    def render(self) -> bytes:
        if not self._shared:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, self._shared)  # type: ignore[no-untyped-call]
        registry.register(self._state)
        return generate_latest(registry)
