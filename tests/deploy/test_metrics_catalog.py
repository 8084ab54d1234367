"""The metrics the code exports are exactly deploy/metrics-catalog.txt (names, types, labels).

The dashboards are checked against the catalog (tests/deploy); this closes the loop to the code.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry

CATALOG = Path(__file__).resolve().parents[2] / "deploy" / "metrics-catalog.txt"


def _catalog() -> dict[str, tuple[str, str, frozenset[str]]]:
    out = {}
    for line in CATALOG.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, kind, source, labels = line.split()[:4]
            if source != "kube-state-metrics":
                out[name] = (kind, source, frozenset() if labels == "-" else frozenset(labels.split(",")))
    return out


def _exported(registry: CollectorRegistry, prefix: str) -> dict[str, tuple[str, frozenset[str]]]:
    found = {}
    for collector in list(registry._collector_to_names):  # noqa: SLF001 - the public API has no listing
        for family in collector.describe() if hasattr(collector, "describe") else collector.collect():
            if not family.name.startswith(prefix):
                continue
            name = family.name + ("_total" if family.type == "counter" else "")
            labels = frozenset(getattr(collector, "_labelnames", ()))
            found[name] = (family.type, labels)
    return found


def test_code_metrics_match_the_catalog() -> None:
    import workers.metrics  # noqa: F401 - registers on the default registry
    from aggregator.metrics import AggregatorMetrics
    from ingest.metrics import IngestMetrics

    ingest_registry, aggregator_registry = CollectorRegistry(), CollectorRegistry()
    IngestMetrics(ingest_registry)
    AggregatorMetrics(aggregator_registry)
    exported = {**_exported(ingest_registry, "traffic_ingest_"), **_exported(aggregator_registry, "traffic_"), **_exported(REGISTRY, "traffic_")}
    catalog = _catalog()
    assert set(exported) == set(catalog), f"only in code: {set(exported) - set(catalog)}; only in catalog: {set(catalog) - set(exported)}"
    for name, (kind, labels) in exported.items():
        assert (kind, labels) == (catalog[name][0], catalog[name][2]), name
