"""Grafana dashboards (deploy/grafana/dashboards) and the metrics catalog
(deploy/metrics-catalog.txt): every query parses with Prometheus' own parser,
and every metric and label it uses is in the catalog."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import grafana_queries

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((REPO_ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


@pytest.fixture(scope="module")
def catalog():
    return grafana_queries.load_catalog()


@pytest.fixture(scope="module")
def parsed(tools):
    """(queries, parse results, problems found before parsing) of all dashboards."""
    queries, problems = grafana_queries.load_dashboards(DASHBOARDS)
    return queries, grafana_queries.parse(tools.promcheck, queries), problems


def test_the_two_dashboards_exist():
    assert {p.name for p in DASHBOARDS} == {"intersection-counts.json", "pipeline-health.json"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path):
    d = json.loads(path.read_text())
    assert d["uid"] and d["title"] and d["id"] is None  # importable anywhere
    names = [v["name"] for v in d["templating"]["list"]]
    assert names[0] == "datasource" and len(names) == len(set(names))
    panels = d["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels:
        pos = p["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, f"panel {p['id']} leaves the 24-column grid"
        if p["type"] == "row":
            continue
        # The datasource is chosen by the variable, so the dashboards work with
        # any Prometheus (compose's provisioned one, kube-prometheus-stack's).
        assert p["datasource"]["uid"] == "${datasource}", f"panel {p['id']}"
        assert p["targets"], f"panel {p['id']} has no query"
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", f"panel {p['id']} target {t['refId']}"


def test_dashboard_uids_are_unique():
    uids = [json.loads(p.read_text())["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids))


def test_every_query_parses_and_uses_catalogued_metrics(parsed, catalog):
    queries, results, problems = parsed
    problems = problems + grafana_queries.check_queries(queries, results, catalog)
    assert not problems, "\n".join(problems)


def test_every_pipeline_metric_is_on_a_dashboard(parsed, catalog):
    """Both directions: a metric in the catalog that no dashboard shows is
    either unneeded or missing from the dashboards."""
    _, results, _ = parsed
    unused = set(catalog) - grafana_queries.metric_names(results, catalog)
    assert not unused, f"catalogued metrics no dashboard uses: {sorted(unused)}"


def test_counts_dashboard_has_the_engineering_views(parsed):
    """15-minute interval bars by approach and movement, a turning-movement
    matrix, live flow (the counts of docs/contracts.md, ``CountRecord``)."""
    queries, _, _ = parsed
    counts = json.loads((REPO_ROOT / "deploy/grafana/dashboards/intersection-counts.json").read_text())
    exprs = [q.expr for q in queries if q.dashboard == "intersection-counts.json"]
    assert any("sum by (approach, movement) (increase(traffic_vehicles_total{" in e and "[15m]" in e for e in exprs)
    tables = [p for p in counts["panels"] if p["type"] == "table"]
    assert any(t["id"] == "groupingToMatrix" for p in tables for t in p.get("transformations", []))
    assert any("rate(traffic_vehicles_total" in e for e in exprs)
    fifteen = [p for p in counts["panels"] if "per 15 min" in p["title"]]
    assert fifteen and all(p["interval"] == "15m" for p in fifteen)


def test_health_dashboard_covers_the_pipeline(parsed):
    queries, results, _ = parsed
    used = {s["metric"] for q, r in zip(queries, results) if q.dashboard == "pipeline-health.json"
            for s in r["selectors"]}
    for needed in ("traffic_ingest_frames_read_total", "traffic_ingest_camera_up", "traffic_worker_consumer_lag",
                   "kube_deployment_status_replicas", "traffic_worker_inference_seconds_bucket",
                   "traffic_aggregator_count_latency_seconds_bucket", "traffic_worker_dlq_total",
                   "traffic_aggregator_dlq_total"):
        assert needed in used, needed


def test_worker_replica_panel_names_the_worker_deployment():
    text = (REPO_ROOT / "deploy/grafana/dashboards/pipeline-health.json").read_text()
    deployment = (REPO_ROOT / "deploy/k8s/worker/deployment.yaml").read_text()
    assert 'deployment=\\"traffic-worker\\"' in text and "name: traffic-worker" in deployment


# --------------------------------------------------------------- catalog

def test_catalog_is_well_formed(catalog):
    for name, entry in catalog.items():
        assert METRIC_NAME.match(name), name
        if entry.type == "counter":
            assert name.endswith("_total"), f"counter {name} should end in _total"
        else:
            assert not name.endswith("_total"), f"{entry.type} {name} should not end in _total"
        assert entry.source in {"ingest", "worker", "aggregator", "kube-state-metrics"}, name
        for label in entry.labels:
            assert METRIC_NAME.match(label) and not label.startswith("__"), f"{name}: label {label}"


def test_catalog_rejects_bad_lines(tmp_path):
    bad = tmp_path / "catalog.txt"
    bad.write_text("traffic_x_total counter ingest\n")  # three columns
    with pytest.raises(ValueError, match="4 columns"):
        grafana_queries.load_catalog(bad)
    bad.write_text("traffic_x_total counter ingest camera\ntraffic_x_total counter ingest camera\n")
    with pytest.raises(ValueError, match="twice"):
        grafana_queries.load_catalog(bad)


# ------------------------------------------------------- the checker itself

CHECKER_CASES = [
    # expr, legend, expected problem ("" = none)
    ('sum by (camera) (rate(traffic_ingest_frames_read_total{camera=~"$camera"}[$__rate_interval]))', "{{camera}}", ""),
    # histogram series map to the catalogued base name; `le` exists on _bucket
    ('histogram_quantile(0.9, sum by (le) (rate(traffic_worker_inference_seconds_bucket[5m])))', "", ""),
    # a metric the code does not export
    ("rate(traffic_ingest_frames_lost_total[5m])", "", "not in metrics-catalog.txt"),
    # a label the metric does not carry
    ('traffic_worker_dlq_total{camera="x"}', "", "has no label 'camera'"),
    # grouping by a label none of the metrics has
    ("sum by (movement) (traffic_worker_frames_in_total)", "", "groups by 'movement'"),
    # a legend naming a label the query cannot have
    ("sum(traffic_worker_frames_in_total)", "{{approach}}", "legend uses {{approach}}"),
    # _sum of a counter is not a thing
    ("traffic_worker_frames_in_total_sum", "", "not in metrics-catalog.txt"),
    # syntax error
    ("sum(rate(traffic_worker_frames_in_total[5m])", "", "does not parse"),
]


@pytest.mark.parametrize("expr,legend,expected", CHECKER_CASES)
def test_query_checker(tools, catalog, expr, legend, expected):
    promql, undefined = grafana_queries.to_promql(expr, {"camera", "datasource"})
    assert not undefined
    q = grafana_queries.Query("t.json", "case", expr, promql, legend)
    problems = grafana_queries.check_queries([q], grafana_queries.parse(tools.promcheck, [q]), catalog)
    if expected:
        assert any(expected in p for p in problems), problems
    else:
        assert problems == []


def test_undefined_dashboard_variable_is_reported():
    d = {"templating": {"list": [{"name": "datasource", "type": "datasource"}]},
         "panels": [{"id": 1, "title": "t", "targets": [{"refId": "A", "expr": 'up{job="$jobb"}'}]}]}
    _, problems = grafana_queries.dashboard_queries(d, "t.json")
    assert any("undefined variable $jobb" in p for p in problems)
