"""Prometheus metrics of one CAS process (a private registry, scraped at /metrics)."""

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


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
        Gauge("veil_sessions", "Sessions stored", registry=self.registry).set_function(
            lambda: float(sessions())
        )
        Gauge("veil_sim_mode", "1 when this CAS accepts sim evidence", registry=self.registry).set(
            1.0 if sim else 0.0
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
