#!/usr/bin/env python3
"""Checks the monitoring artefacts that promtool cannot check.

    python3 scripts/check-dashboard.py

1. deployments/grafana/dashboards/streaming_dashboard.json
   - is valid JSON, a Grafana 10+ dashboard (schemaVersion >= 37, a uid,
     no fixed numeric id);
   - has the `datasource` variable (type datasource, Prometheus) and the
     `space_id` query variable (label_values(engram_streaming_observations_total,
     space_id), multi-value, with "All");
   - has exactly the eight panels listed in REQUIRED_PANELS, by title;
   - every panel and every target uses the `${datasource}` variable;
   - every PromQL expression uses only metric names the server exports
     (histograms through their _bucket/_sum/_count series) or that
     Prometheus writes itself for a target (`up`), and every selector of a
     metric labelled by space_id filters on `$space_id`;
   - no panel draws a backpressure mark as a fixed fraction of the
     capacity: the marks are configurable, and the server exports them.
2. deployments/prometheus/alerts/streaming.yml
   - every alert has severity, summary, description and runbook_url, and
     its expression uses only those metric names;
   - every runbook_url is the path docs/operations/streaming-monitoring.md
     (relative to the repository root: no hosting URL is assumed) with an
     anchor that a heading of that document produces (GitHub's rules:
     lower case, punctuation other than '-' and '_' dropped, spaces to '-',
     repeated anchors numbered -1, -2, ...).

Standard library only. Prints one line per failure and, last,
`dashboard: N passed, M failed`; exits 1 when anything failed.
"""

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deployments/grafana/dashboards/streaming_dashboard.json"
ALERTS = ROOT / "deployments/prometheus/alerts/streaming.yml"
DOC_REL = "docs/operations/streaming-monitoring.md"
DOC = ROOT / DOC_REL
RUNBOOK_PREFIX = DOC_REL + "#"
ALERT_COUNT = 8

# What the server exports on /metrics: name -> (type, labels).
METRICS = {
    "engram_streaming_observations_total": ("counter", {"space_id", "priority"}),
    "engram_streaming_observations_rejected_total": ("counter", {"space_id", "reason"}),
    "engram_streaming_observations_duplicate_total": ("counter", {"space_id"}),
    "engram_streaming_worker_busy_seconds_total": ("counter", {"worker_id"}),
    "engram_streaming_backpressure_activations_total": ("counter", {"space_id"}),
    "engram_streaming_queue_depth": ("gauge", {"space_id", "priority"}),
    "engram_streaming_worker_utilization": ("gauge", {"worker_id"}),
    "engram_streaming_active_sessions_total": ("gauge", set()),
    "engram_streaming_observation_latency_seconds": ("histogram", {"space_id"}),
    "engram_streaming_recall_latency_seconds": ("histogram", {"space_id"}),
    "engram_streaming_batch_size": ("histogram", {"worker_id"}),
    "engram_streaming_queue_capacity": ("gauge", set()),
    "engram_streaming_queue_slow_down_ratio": ("gauge", set()),
    "engram_streaming_queue_overloaded_ratio": ("gauge", set()),
    "engram_streaming_backpressure_active": ("gauge", set()),
    "engram_streaming_worker_restarts_total": ("counter", {"worker_id"}),
    "engram_streaming_quarantined_total": ("counter", {"space_id"}),
    "engram_streaming_worker_stuck": ("gauge", {"worker_id"}),
    "engram_streaming_sessions_kept": ("gauge", set()),
    "engram_index_vectors": ("gauge", {"space_id"}),
    "engram_index_memory_bytes": ("gauge", {"space_id"}),
    "engram_space_memory_bytes": ("gauge", {"space_id", "kind"}),
    "engram_queue_memory_bytes": ("gauge", set()),
    "engram_streaming_index_lag_seconds": ("gauge", {"space_id"}),
    "engram_wal_sync_duration_seconds": ("histogram", set()),
    "process_resident_memory_bytes": ("gauge", set()),
    "process_cpu_seconds_total": ("counter", set()),
    # Cluster mode only (docs/operations/cluster.md): every node exports
    # has_owner for every partition; owned and lag only the partition's owner.
    "engram_cluster_partition_has_owner": ("gauge", {"partition"}),
    "engram_cluster_partition_owned": ("gauge", {"partition"}),
    "engram_cluster_partition_lag": ("gauge", {"partition"}),
    "engram_cluster_ownership_changes_total": ("counter", set()),
    "engram_cluster_applied_total": ("counter", set()),
    "engram_cluster_apply_skipped_total": ("counter", set()),
    "engram_cluster_snapshots_total": ("counter", set()),
    "engram_cluster_publish_retries_total": ("counter", set()),
    "engram_cluster_lease_loop_restarts_total": ("counter", set()),
    "engram_cluster_lag_refusals_total": ("counter", set()),
    "engram_cluster_consumer_restarts_total": ("counter", set()),
    "engram_cluster_stream_sessions": ("gauge", set()),
    "engram_cluster_publish_pending": ("gauge", set()),
    "engram_cluster_stream_rejected_total": ("counter", {"reason"}),
    "engram_cluster_publish_seconds": ("histogram", set()),
    "engram_cluster_takeover_seconds": ("histogram", set()),
}
# What Prometheus writes itself for every scrape target (job and instance
# are the only labels, and every series may use those anyway).
PROMETHEUS_SERIES = {
    "up": ("gauge", set()),
}


def series_names():
    """Series names a query may select: histograms only via their parts."""
    names = {}
    for name, (kind, labels) in (METRICS | PROMETHEUS_SERIES).items():
        if kind == "histogram":
            names[name + "_bucket"] = labels | {"le"}
            names[name + "_sum"] = labels
            names[name + "_count"] = labels
        else:
            names[name] = labels
    return names


SERIES = series_names()

REQUIRED_PANELS = [
    "Observation rate by space",
    "Queue depth by priority",
    "Worker utilization",
    "Backpressure events",
    "Latency P50 / P99 / P99.9",
    "Rejection rate by reason",
    "Active sessions",
    "Memory by kind",
]

SPACE_VARIABLE_QUERY = "label_values(engram_streaming_observations_total, space_id)"

PROMQL_KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "atan2",
}


class Report:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, ok, what):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL {what}")
        return ok


def strip_strings(expr):
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)


def selectors(expr):
    """(metric name, label matcher text or None) for every metric selected.

    Function and aggregation names (followed by '('), keywords, grouping
    label lists, ranges, durations and numbers are not metric names."""
    out = []
    # Label matchers are kept aside (their strings hold $space_id).
    text = expr
    matchers = []

    def keep(m):
        matchers.append(m.group(0)[1:-1])
        return "{#%d}" % (len(matchers) - 1)

    text = re.sub(r'\{(?:[^{}"]|"(?:[^"\\]|\\.)*")*\}', keep, text)
    text = strip_strings(text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"(?<![\w:#])\d+(?:ms|s|m|h|d|w|y)\b", " ", text)  # durations (offset 10m)
    text = re.sub(r"(?<![\w:.#])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?", " ", text)  # numbers
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?(\s*\{#(\d+)\})?", text):
        name, call, _, idx = m.groups()
        if call or name.lower() in PROMQL_KEYWORDS:
            continue
        out.append((name, matchers[int(idx)] if idx is not None else None))
    # A bare matcher ({__name__=...}) would escape the name check.
    if re.search(r"(^|[^\w:\s])\s*\{#\d+\}", text):
        out.append(("{bare selector}", None))
    return out


def check_expr(report, where, expr, require_space_filter):
    report.check(expr.count("(") == expr.count(")"), f"{where}: unbalanced parentheses in {expr!r}")
    found = selectors(expr)
    report.check(bool(found), f"{where}: no metric selected in {expr!r}")
    for name, matcher in found:
        if not report.check(name in SERIES, f"{where}: unknown metric {name!r} in {expr!r}"):
            continue
        used = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", matcher or ""))
        report.check(used <= SERIES[name] | {"job", "instance"},
                     f"{where}: {name} has no label(s) {sorted(used - SERIES[name])}")
        if require_space_filter and "space_id" in SERIES[name]:
            report.check(bool(matcher) and re.search(r'space_id\s*=~\s*"\$\{?space_id\}?"', matcher) is not None,
                         f'{where}: {name} must filter on space_id=~"$space_id"')


def check_no_fixed_mark(report, where, expr):
    """The queue capacity times, or compared with, a number is a backpressure
    mark copied from the defaults; the server exports the marks it uses."""
    if "engram_streaming_queue_capacity" not in expr:
        return
    text = strip_strings(expr)
    fixed = re.search(r"engram_streaming_queue_capacity(?:\s*\))*\s*(?:\*|[<>]=?)\s*\d"
                      r"|\d\s*\*\s*(?:\w+\s*)?\(*\s*engram_streaming_queue_capacity", text)
    report.check(fixed is None,
                 f"{where}: a fixed fraction of the queue capacity in {expr!r}; use the marks the "
                 "server exports (engram_streaming_queue_slow_down_ratio, engram_streaming_queue_overloaded_ratio)")


def uses_datasource_variable(ds):
    return isinstance(ds, dict) and ds.get("uid") in ("${datasource}", "$datasource") \
        and ds.get("type", "prometheus") == "prometheus"


def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


def check_dashboard(report):
    try:
        dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        report.check(False, f"{DASHBOARD.relative_to(ROOT)} does not parse: {e}")
        return
    report.check(True, "dashboard parses")
    report.check(isinstance(dash.get("schemaVersion"), int) and dash["schemaVersion"] >= 37,
                 "schemaVersion >= 37 (Grafana 10)")
    report.check(bool(dash.get("uid")) and dash.get("id") is None, "a uid and id null (importable)")
    report.check(bool(dash.get("title")), "a title")

    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    report.check(ds is not None and ds.get("type") == "datasource" and ds.get("query") == "prometheus",
                 "variable 'datasource' of type datasource, Prometheus")
    sp = variables.get("space_id")
    if report.check(sp is not None and sp.get("type") == "query", "variable 'space_id' of type query"):
        q = sp.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        norm = lambda s: re.sub(r"\s+", "", s or "")  # noqa: E731
        report.check(norm(q) == norm(SPACE_VARIABLE_QUERY), f"space_id queries {SPACE_VARIABLE_QUERY}")
        report.check(sp.get("multi") is True and sp.get("includeAll") is True, "space_id is multi-value with All")
        report.check(uses_datasource_variable(sp.get("datasource")), "space_id uses the datasource variable")

    panels = [p for p in all_panels(dash.get("panels", [])) if p.get("type") != "row"]
    titles = [p.get("title") for p in panels]
    report.check(len(panels) == 8, f"eight panels (found {len(panels)}: {titles})")
    for t in REQUIRED_PANELS:
        report.check(titles.count(t) == 1, f"panel {t!r} present once")
    ids = [p.get("id") for p in panels]
    report.check(len(set(ids)) == len(ids) and None not in ids, "panel ids unique")

    for p in panels:
        where = f"panel {p.get('title')!r}"
        report.check(uses_datasource_variable(p.get("datasource")), f"{where}: datasource is ${{datasource}}")
        report.check(isinstance(p.get("gridPos"), dict), f"{where}: has gridPos")
        targets = p.get("targets", [])
        report.check(bool(targets), f"{where}: has targets")
        refs = [t.get("refId") for t in targets]
        report.check(len(set(refs)) == len(refs), f"{where}: refIds unique")
        for t in targets:
            twhere = f"{where} target {t.get('refId')}"
            report.check(uses_datasource_variable(t.get("datasource")), f"{twhere}: datasource is ${{datasource}}")
            expr = t.get("expr", "")
            if report.check(bool(expr.strip()), f"{twhere}: has an expr"):
                check_expr(report, twhere, expr, require_space_filter=True)
                check_no_fixed_mark(report, twhere, expr)


def github_anchors(markdown):
    """Anchors GitHub makes for the headings of a Markdown document."""
    anchors, seen, fence = [], {}, None
    for line in markdown.splitlines():
        m = re.match(r"^\s{0,3}(`{3,}|~{3,})", line)
        if m:
            if fence is None:
                fence = m.group(1)[0]
            elif m.group(1)[0] == fence:
                fence = None
            continue
        if fence is not None:
            continue
        m = re.match(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))  # links -> their text
        text = re.sub(r"<[^>]+>", "", text)  # inline HTML
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.append(slug if n == 0 else f"{slug}-{n}")
    return anchors


def alert_blocks(text):
    """(name, block text) of every `- alert:` rule of a rule file."""
    starts = [(m.start(), m.group(1)) for m in re.finditer(r"^\s*-\s*alert:\s*(\S+)\s*$", text, re.M)]
    for i, (pos, name) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else len(text)
        # A following non-alert rule (- record:) ends the block too.
        m = re.search(r"^\s*-\s*record:", text[pos:end], re.M)
        yield name, text[pos:pos + m.start()] if m else text[pos:end]


def yaml_value(block, key):
    """A scalar of a rule block: inline (quoted or not) or a >- / | block."""
    lines = block.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)" + re.escape(key) + r":\s*(.*)$", line)
        if not m:
            continue
        indent, rest = len(m.group(1)), m.group(2).strip()
        if rest and rest[0] in ">|":
            body = []
            for nxt in lines[i + 1:]:
                if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                    break
                body.append(nxt.strip())
            return (" " if rest[0] == ">" else "\n").join(body).strip()
        if len(rest) >= 2 and rest[0] == rest[-1] and rest[0] in "\"'":
            return rest[1:-1]
        return rest
    return None


def check_alerts(report):
    try:
        rules = ALERTS.read_text(encoding="utf-8")
        doc = DOC.read_text(encoding="utf-8")
    except OSError as e:
        report.check(False, f"cannot read: {e}")
        return
    anchors = set(github_anchors(doc))
    blocks = list(alert_blocks(rules))
    report.check(len(blocks) == ALERT_COUNT,
                 f"{ALERT_COUNT} alerts in {ALERTS.relative_to(ROOT)} (found {len(blocks)})")
    for name, block in blocks:
        where = f"alert {name}"
        sev = yaml_value(block, "severity")
        report.check(sev in ("warning", "critical"), f"{where}: severity warning|critical (got {sev!r})")
        for key in ("summary", "description"):
            report.check(bool(yaml_value(block, key)), f"{where}: has {key}")
        expr = yaml_value(block, "expr")
        if report.check(bool(expr), f"{where}: has an expr"):
            check_expr(report, where, expr, require_space_filter=False)
            check_no_fixed_mark(report, where, expr)
        url = yaml_value(block, "runbook_url")
        if report.check(bool(url) and url.startswith(RUNBOOK_PREFIX),
                        f"{where}: runbook_url starts with {RUNBOOK_PREFIX} (got {url!r})"):
            anchor = url[len(RUNBOOK_PREFIX):]
            report.check(anchor in anchors, f"{where}: anchor #{anchor} is not a heading of {DOC_REL}")


def main():
    report = Report()
    check_dashboard(report)
    check_alerts(report)
    print(f"dashboard: {report.passed} passed, {report.failed} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
