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
    """Gauges read when scraped: the number of sessions, whether sim evidence counts,
    whether the store answers, and when the CAS's certificates expire."""

    def __init__(self, sessions: Callable[[], int], sim: bool, expiry: dict[str, float]) -> None:
        self._sessions = sessions
        self._sim = sim
        self._expiry = expiry

    def collect(self) -> Iterator[Metric]:
        try:
            sessions, up = float(self._sessions()), 1.0
        except Exception:  # the store is down, whatever the driver raises
            sessions, up = float("nan"), 0.0
        yield GaugeMetricFamily("veil_store_up", "1 when the record store answers", value=up)
        yield GaugeMetricFamily("veil_sessions", "Sessions stored", value=sessions)
        yield GaugeMetricFamily(
            "veil_sim_mode", "1 when this CAS accepts sim evidence", value=1.0 if self._sim else 0.0
        )
        expiry = GaugeMetricFamily(
            "veil_certificate_expiry_timestamp_seconds",
            "When a certificate the CAS presents expires (ca: its identity; server: its TLS certificate)",
            labels=["certificate"],
        )
        for name, when in sorted(self._expiry.items()):
            expiry.add_metric([name], when)
        yield expiry


class CasMetrics:
    def __init__(
        self, sessions: Callable[[], int], sim: bool, expiry: dict[str, float] | None = None
    ) -> None:
        self.registry = CollectorRegistry()
        self.attestations = Counter(
            "veil_attestations", "Attestation decisions", ["result"], registry=self.registry
        )
        self.replica_joins = Counter(
            "veil_replica_joins",
            "Requests of new replicas for the master key",
            ["result"],
            registry=self.registry,
        )
        self.integrity_errors = Counter(
            "veil_integrity_errors",
            "Stored data that failed its checks (audit chain, sealed records)",
            ["kind"],
            registry=self.registry,
        )
        self.requests = Histogram(
            "veil_request_seconds",
            "Time to answer a request",
            ["route", "status"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self._state = _State(sessions, sim, expiry or {})
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
