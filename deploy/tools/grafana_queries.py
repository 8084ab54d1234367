"""The PromQL in the Grafana dashboards, and the metrics it uses.

The dashboards (deploy/grafana/dashboards/*.json) are the one place that says
which metrics they read; this module extracts that from them with Prometheus'
own PromQL parser (deploy/tools/promcheck) and compares it with
deploy/metrics-catalog.txt.

    python deploy/tools/grafana_queries.py deploy/grafana/dashboards/*.json
prints the metric names the dashboards use, one a line (exit 1 if a query
does not parse).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

REPO_ROOT = Path(__file__).resolve().parents[2]
CATALOG = REPO_ROOT / "deploy" / "metrics-catalog.txt"

# Labels Prometheus attaches at scrape time, in docker-compose (job, instance)
# and with the Prometheus Operator's PodMonitors (namespace, pod, container, ...).
SCRAPE_LABELS = frozenset({"job", "instance", "namespace", "pod", "container", "service", "endpoint"})
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Grafana's global range/interval variables, replaced by a duration to parse.
_GRAFANA_DURATIONS = re.compile(r"\$(?:\{__(?:rate_interval|interval|range)\}|__(?:rate_interval|interval|range)\b)")
_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<selector>.+?)\s*,\s*)?(?P<label>[a-zA-Z_]\w*)\s*\)\s*$", re.S)
_QUERY_RESULT = re.compile(r"^\s*query_result\((?P<expr>.+)\)\s*$", re.S)
_LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_]\w*)\s*\}\}")


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    type: str
    source: str
    labels: frozenset[str]


def load_catalog(path: Path = CATALOG) -> dict[str, CatalogEntry]:
    """Reads deploy/metrics-catalog.txt: name type source labels (comma list or -)."""
    entries: dict[str, CatalogEntry] = {}
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 4:
            raise ValueError(f"{path}:{lineno}: want 4 columns (name type source labels), got {raw!r}")
        name, mtype, source, labels = fields
        if mtype not in ("counter", "gauge", "histogram", "summary"):
            raise ValueError(f"{path}:{lineno}: unknown metric type {mtype!r}")
        if name in entries:
            raise ValueError(f"{path}:{lineno}: {name} listed twice")
        entries[name] = CatalogEntry(name, mtype, source,
                                     frozenset() if labels == "-" else frozenset(labels.split(",")))
    return entries


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a dashboard, with where it came from."""

    dashboard: str
    where: str  # e.g. 'panel 3 "Cameras up" target A' or 'variable intersection'
    expr: str  # as written in Grafana (variables and all)
    promql: str  # with Grafana variables replaced, ready to parse
    legend: str = ""
    label_values_label: str = ""  # for label_values(selector, label) variables


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels") or [])


def variable_names(dashboard: dict[str, Any]) -> set[str]:
    return {v["name"] for v in (dashboard.get("templating") or {}).get("list", [])}


def to_promql(expr: str, variables: set[str]) -> tuple[str, list[str]]:
    """Replaces Grafana's $__rate_interval/$__interval/$__range with a duration and
    dashboard variables with a plain value. Returns (promql, undefined variables)."""
    undefined: list[str] = []
    text = _GRAFANA_DURATIONS.sub("5m", expr)

    def variable(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in variables:
            undefined.append(name)
        return "x"

    return _VARIABLE.sub(variable, text), undefined


def dashboard_queries(dashboard: dict[str, Any], name: str) -> tuple[list[Query], list[str]]:
    """All PromQL of one dashboard: panel targets and query variables.
    Returns (queries, problems found without parsing)."""
    variables = variable_names(dashboard)
    queries: list[Query] = []
    problems: list[str] = []

    def add(where: str, expr: str, legend: str = "", label: str = "") -> None:
        promql, undefined = to_promql(expr, variables)
        for var in undefined:
            problems.append(f"{name}: {where}: uses undefined variable ${var}")
        queries.append(Query(name, where, expr, promql, legend, label))

    for var in (dashboard.get("templating") or {}).get("list", []):
        if var.get("type") != "query":
            continue
        raw = var.get("query")
        text = raw.get("query", "") if isinstance(raw, dict) else str(raw or "")
        where = f"variable {var['name']}"
        if m := _LABEL_VALUES.match(text):
            if m.group("selector"):
                add(where, m.group("selector"), label=m.group("label"))
            else:
                problems.append(f"{name}: {where}: label_values() without a metric scans every series")
        elif m := _QUERY_RESULT.match(text):
            add(where, m.group("expr"))
        else:
            problems.append(f"{name}: {where}: unsupported variable query {text!r}")
    for panel in _panels(dashboard.get("panels") or []):
        for target in panel.get("targets") or []:
            if "expr" not in target:
                continue
            where = f'panel {panel.get("id")} "{panel.get("title")}" target {target.get("refId")}'
            add(where, target["expr"], legend=target.get("legendFormat", ""))
    return queries, problems


def parse(promcheck: Path, queries: list[Query]) -> list[dict[str, Any]]:
    """Runs Prometheus' PromQL parser (promcheck exprs) over the queries;
    one result per query, in order."""
    proc = subprocess.run([str(promcheck), "exprs"], input=json.dumps([q.promql for q in queries]),
                          capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"promcheck failed ({proc.returncode}): {proc.stderr}")
    results = json.loads(proc.stdout)
    if len(results) != len(queries):
        raise RuntimeError("promcheck returned a different number of results")
    return results


def catalog_entry(metric: str, catalog: dict[str, CatalogEntry]) -> tuple[CatalogEntry | None, set[str]]:
    """The catalog entry a series name belongs to (histogram series map to their
    base name) and the labels that series may carry."""
    if metric in catalog:
        entry = catalog[metric]
        return entry, set(entry.labels) | SCRAPE_LABELS
    for suffix in HISTOGRAM_SUFFIXES:
        base = metric[: -len(suffix)] if metric.endswith(suffix) else None
        if base and base in catalog and catalog[base].type in ("histogram", "summary"):
            extra = {"le"} if suffix == "_bucket" else set()
            return catalog[base], set(catalog[base].labels) | SCRAPE_LABELS | extra
    return None, set()


def check_queries(queries: list[Query], results: list[dict[str, Any]],
                  catalog: dict[str, CatalogEntry]) -> list[str]:
    """Problems: a query that does not parse, a metric or label not in the
    catalog, a grouping or legend label none of the query's metrics has."""
    problems = []
    for q, r in zip(queries, results):
        here = f"{q.dashboard}: {q.where}"
        if r["error"]:
            problems.append(f"{here}: PromQL does not parse: {r['error']} in {q.expr!r}")
            continue
        known_labels: set[str] = set()
        for sel in r["selectors"]:
            entry, labels = catalog_entry(sel["metric"], catalog)
            if entry is None:
                problems.append(f"{here}: metric {sel['metric']!r} is not in {CATALOG.name}")
                continue
            known_labels |= labels
            for label in sel["labels"]:
                if label not in labels:
                    problems.append(f"{here}: {sel['metric']} has no label {label!r} (catalog: {sorted(entry.labels)})")
        for grouping in r["groupings"]:
            if grouping["without"]:
                continue
            under: set[str] = set()
            for metric in grouping["metrics"]:
                under |= catalog_entry(metric, catalog)[1]
            for label in grouping["labels"]:
                if under and label not in under:
                    problems.append(f"{here}: groups by {label!r}, which none of {grouping['metrics']} has")
        if q.label_values_label and known_labels and q.label_values_label not in known_labels:
            problems.append(f"{here}: label_values of {q.label_values_label!r}, which the metric does not have")
        for label in _LEGEND_LABEL.findall(q.legend):
            if known_labels and label not in known_labels:
                problems.append(f"{here}: legend uses {{{{{label}}}}}, which the query's metrics do not have")
    return problems


def metric_names(results: list[dict[str, Any]], catalog: dict[str, CatalogEntry]) -> set[str]:
    """Catalog names (histograms by base name) the parsed queries use."""
    names = set()
    for r in results:
        for sel in r["selectors"]:
            entry, _ = catalog_entry(sel["metric"], catalog)
            names.add(entry.name if entry else sel["metric"])
    return names


def load_dashboards(paths: list[Path]) -> tuple[list[Query], list[str]]:
    queries, problems = [], []
    for path in paths:
        q, p = dashboard_queries(json.loads(path.read_text()), path.name)
        queries += q
        problems += p
    return queries, problems


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import tools_cache

    cache, reason = tools_cache.locate()
    if cache is None:
        print(reason, file=sys.stderr)
        return 2
    paths = [Path(a) for a in argv] or sorted((REPO_ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
    queries, problems = load_dashboards(paths)
    catalog = load_catalog()
    results = parse(cache.promcheck, queries)
    problems += check_queries(queries, results, catalog)
    for name in sorted(metric_names(results, catalog)):
        print(name)
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
