"""Prometheus metrics of one server (its own registry, so two apps in one process never share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ServingMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("llm_http_requests", "HTTP requests by route and status code.", ["route", "status"], registry=r)
        self.latency = Histogram("llm_http_request_latency_seconds", "Time to the response's first byte, by route.",
                                 ["route"], registry=r, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.completions = Counter("llm_completions", "Chat completions served, by model version and alias.",
                                   ["version", "alias"], registry=r)
        self.completion_tokens = Counter("llm_completion_tokens", "Tokens generated, by model version and alias.",
                                         ["version", "alias"], registry=r)
        self.completion_latency = Histogram("llm_completion_latency_seconds", "Whole completion time, by model version.",
                                            ["version"], registry=r, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.feedback = Counter("llm_feedback_events", "Feedback posts accepted, by kind.", ["kind"], registry=r)
        self.live = Gauge("llm_live_version", "1 for the version each alias points at now.", ["alias", "version"], registry=r)
        self.swaps = Counter("llm_hot_swaps", "Alias changes swapped in without a restart.", registry=r)
        self.poll_errors = Counter("llm_registry_poll_errors", "Registry polls that failed (the live models stay).", registry=r)

    def watch_writer(self, writer) -> None:
        """Buffer state read when scraped."""
        Gauge("llm_feedback_buffered_events", "Events waiting for the next flush.", registry=self.registry
              ).set_function(lambda: writer.buffered)
        Gauge("llm_feedback_written_events", "Events written to the bucket.", registry=self.registry
              ).set_function(lambda: writer.written_events)
        Gauge("llm_feedback_dropped_events", "Events dropped because the buffer overflowed while the bucket was down.",
              registry=self.registry).set_function(lambda: writer.dropped_events)

    def show_live(self, live: dict[str, str]) -> None:
        self.live.clear()
        for alias, version in live.items():
            self.live.labels(alias=alias, version=version).set(1)
