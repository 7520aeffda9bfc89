"""The operator's files under deploy/: the alerting rules, their unit tests, the dashboard.

promtool (Debian's `prometheus` package, which `make test` installs) checks and unit-tests
the rules; every PromQL expression of the dashboard is handed to it as a recording rule,
so one that does not parse fails here rather than on an operator's screen. Every metric
and label value the files name must be on a live /metrics of the real service under
gunicorn, and `promtool check metrics` must find nothing to say about it. Last, a real
Prometheus scrapes the real service with the rules loaded: every rule evaluates, none
fires on a healthy service, every query of the dashboard returns a series, and the
service stopping makes PublicStatusScrapeFailing pending for its instance.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conftest import FAST
from support import ROOT, Service, free_port, wait_for

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
DEPLOY = ROOT / "deploy"
DASHBOARD = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
RULES = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
RULE_TESTS = yaml.safe_load((DEPLOY / "alerts.test.yml").read_text())
ALERTS = [rule for group in RULES["groups"] for rule in group["rules"]]
DOCS = ROOT / "docs" / "operating-dashboards.md"

# Metrics (and label values) the files use that the service does not export yet: issue 21
# has the lead adding them. Each is an xfail (strict, so it turns red the day it appears:
# then strike it from here) and the live queries that use it are left out until then.
PENDING: dict[str, str] = {}   # metrics the files use before the service exports them: none now
FROM_PROMETHEUS = {"up"}   # made by the scrape, not exported by the service


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, text=True,
                          timeout=60)


# --------------------------------------------------------------------------- PromQL, read

GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan"}
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: every identifier left once strings,
    label matchers, ranges and grouping clauses are gone, except functions (followed by
    a parenthesis) and keywords."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = GROUPING.sub(" ", expr)
    names = set()
    for word in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        if expr[word.end():].lstrip().startswith("(") or word.group().lower() in KEYWORDS:
            continue
        names.add(word.group())
    return names


def label_values(expr: str, selecting: bool = False) -> set[tuple[str, str, str]]:
    """(metric, label, value) for every label value a selector names (only those it
    selects by, with `selecting`), `job` and `instance` aside (they come from the
    scrape); a regex matcher must be a plain alternation."""
    found = set()
    for metric, matchers in SELECTOR.findall(expr):
        for label, op, value in MATCHER.findall(matchers):
            if label in ("job", "instance") or (selecting and op[0] == "!"):
                continue
            values = value.split("|") if "~" in op else [value]
            assert all(re.fullmatch(r"[a-zA-Z0-9_]+", v) for v in values), (label, value)
            found.update((metric, label, v) for v in values)
    return found


@pytest.mark.parametrize(("expr", "names"), [
    ('sum by (instance, le) (rate(a_bucket{job=~"$job", outcome!~"ok|x"}[5m]))', {"a_bucket"}),
    ("time() - max by (instance) (b{x='y'})", {"b"}),
    ("c == 1 and on (job, instance) d == 0", {"c", "d"}),
    ("histogram_quantile(0.99, sum(rate(e[1m])) by (le)) > bool 0.5", {"e"}),
    ('absent(up{job="public-status"})', {"up"}),
])
def test_metric_names_are_read_from_promql(expr, names):
    assert metric_names(expr) == names


# --------------------------------------------------------------------------- the dashboard

def panels(dashboard: dict = DASHBOARD) -> list[dict]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))   # a collapsed row holds its own
    return found


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in panels() for target in panel.get("targets", [])]


def as_promql(expr: str, rate_interval: str = "1m") -> str:
    """A dashboard expression as Prometheus gets it from Grafana with every instance of
    every job selected."""
    return (expr.replace("$__rate_interval", rate_interval)
            .replace("$instance", ".*").replace("$job", ".*"))


def alert_exprs() -> list[str]:
    return [rule["expr"] for rule in ALERTS]


def test_the_dashboard_imports_as_it_is():
    [source] = DASHBOARD["__inputs"]
    assert source == {**source, "name": "DS_PROMETHEUS", "type": "datasource",
                      "pluginId": "prometheus"}
    assert DASHBOARD["uid"] == "public-status" and DASHBOARD["id"] is None
    assert DASHBOARD["schemaVersion"] >= 41     # Grafana 12's; later ones migrate it
    datasources = []

    def walk(node):
        if isinstance(node, dict):
            if "datasource" in node:
                datasources.append(node["datasource"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(DASHBOARD)
    builtin = {"type": "grafana", "uid": "-- Grafana --"}   # the annotations' own
    assert datasources and all(ds in ({"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, builtin)
                               for ds in datasources), datasources


def test_the_dashboard_is_per_instance_and_summed():
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["instance"]["multi"] and variables["instance"]["includeAll"]
    assert "$job" in variables["instance"]["definition"]
    for expr in dashboard_exprs():           # every query obeys both variables
        for selector in SELECTOR.findall(expr):
            assert 'job=~"$job"' in selector[1] and 'instance=~"$instance"' in selector[1], expr
    legends = {t["legendFormat"] for p in panels() for t in p.get("targets", [])}
    assert {"{{instance}}", "all"} <= legends


def test_the_dashboard_panels_tile_without_overlap():
    ids, cells = set(), {}
    for panel in panels():
        assert panel["id"] not in ids
        ids.add(panel["id"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, (panel["title"], cells.get((x, y)))
                cells[(x, y)] = panel["title"]


def test_the_dashboard_shows_what_the_operator_needs():
    used = set().union(*map(metric_names, dashboard_exprs()))
    assert {
        "public_status_open_streams", "public_status_watched_projects",
        "public_status_deliveries_total", "public_status_upstream_requests_total",
        "public_status_upstream_seconds_bucket", "public_status_cache_total",
        "public_status_streams_dropped_total", "public_status_streams_rejected_total",
        "public_status_requests_refused_total", "public_status_connections_evicted_total",
        "public_status_redis_shared", "public_status_redis_configured",
        "public_status_database_up", "public_status_snapshot_age_max_seconds",
        "process_resident_memory_bytes", "process_open_fds",
    } <= used
    assert any("histogram_quantile(0.5," in e for e in dashboard_exprs())
    assert any("histogram_quantile(0.99," in e for e in dashboard_exprs())


def test_every_dashboard_expression_parses(tmp_path):
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expression_{i}", "expr": as_promql(expr)}
        for i, expr in enumerate(dashboard_exprs())]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules))    # JSON is YAML
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(dashboard_exprs())} rules found" in result.stdout


# --------------------------------------------------------------------------- the alerts

def test_the_alert_rules_pass_promtool_check():
    result = promtool("check", "rules", str(DEPLOY / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_the_alert_rules_pass_their_unit_tests():
    result = promtool("test", "rules", str(DEPLOY / "alerts.test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def rule_tests_of(alert: str) -> list[dict]:
    return [case for group in RULE_TESTS["tests"] for case in group.get("alert_rule_test", [])
            if case["alertname"] == alert]


@pytest.mark.parametrize("rule", ALERTS, ids=lambda rule: rule["alert"])
def test_each_alert_is_complete_and_tested(rule):
    assert rule["labels"]["severity"] in ("critical", "warning")
    assert rule["for"] and {"summary", "description", "runbook"} <= set(rule["annotations"])
    anchor = rule["annotations"]["runbook"].split("#")[1]
    headings = re.findall(r"^#+ (.+)$", DOCS.read_text(), flags=re.MULTILINE)
    assert anchor in {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}
    cases = rule_tests_of(rule["alert"])
    assert any(case["exp_alerts"] for case in cases), "never seen firing"
    assert any(not case["exp_alerts"] for case in cases), "never seen silent"


@pytest.mark.parametrize("rule", ALERTS, ids=lambda rule: rule["alert"])
def test_the_unit_tests_hold_each_alert_to_its_for(rule, tmp_path):
    """Each rule without its `for:` fails its unit tests: they do check that a condition
    must last before anyone is paged."""
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    [hurried] = [r for g in rules["groups"] for r in g["rules"] if r["alert"] == rule["alert"]]
    del hurried["for"]
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    shutil.copy(DEPLOY / "alerts.test.yml", tmp_path)
    result = promtool("test", "rules", str(tmp_path / "alerts.test.yml"))
    assert result.returncode != 0 and f"alertname: {rule['alert']}," in result.stdout + result.stderr


# --------------------------------------------------------------------------- a live /metrics

@pytest.fixture(scope="module")
def live_metrics(pg):
    """The text of /metrics from the real service under gunicorn."""
    service = Service({"DATABASE_URL": pg.reader_url, **FAST})
    try:
        yield requests.get(service.url + "/metrics", timeout=5).text
    finally:
        service.stop()


def exported(text: str) -> tuple[set[str], set[tuple[str, str, str]]]:
    """Sample names a scrape of `text` can yield (a family declared without samples yet
    included), and (sample, label, value) of the samples it holds."""
    names, values = set(), set()
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"],
                "summary": ["", "_count", "_sum"]}
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, [""]))
        for sample in family.samples:
            names.add(sample.name)
            values.update((sample.name, label, value) for label, value in sample.labels.items())
    return names, values


USED = sorted(set().union(*map(metric_names, dashboard_exprs() + alert_exprs())) - FROM_PROMETHEUS)
USED_VALUES = sorted(set().union(*map(label_values, dashboard_exprs() + alert_exprs())))


def waits_for_the_lead(expr: str) -> bool:
    """Whether `expr` selects a metric or label value still in PENDING."""
    return bool(metric_names(expr) & PENDING.keys()) or any(
        f'{m}{{{k}="{v}"}}' in PENDING for m, k, v in label_values(expr, selecting=True))


def pending(key: str):
    return pytest.param(key, id=key, marks=pytest.mark.xfail(
        strict=True, reason=f"{key} ({PENDING[key]}) is being added by the lead, issue 21"))


@pytest.mark.e2e
@pytest.mark.parametrize("name", [pending(n) if n in PENDING else n for n in USED])
def test_every_metric_the_files_use_is_exported(name, live_metrics):
    assert name in exported(live_metrics)[0]


@pytest.mark.e2e
@pytest.mark.parametrize("metric_label_value", [
    pending(f'{m}{{{k}="{v}"}}') if f'{m}{{{k}="{v}"}}' in PENDING else f'{m}{{{k}="{v}"}}'
    for m, k, v in USED_VALUES])
def test_every_label_value_the_files_use_is_exported(metric_label_value, live_metrics):
    metric, label, value = re.fullmatch(r'(\w+)\{(\w+)="(\w+)"\}', metric_label_value).groups()
    names, values = exported(live_metrics)
    if metric in names and not any(m == metric for m, _, _ in values):
        return   # a labelled family with no child yet: its label values come with use
    assert (metric, label, value) in values


@pytest.mark.e2e
def test_promtool_check_metrics_is_clean_on_a_live_metrics(live_metrics):
    assert "public_status_open_streams" in live_metrics
    result = promtool("check", "metrics", stdin=live_metrics)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


# --------------------------------------------------------------------------- a real Prometheus

class Prometheus:
    """A Prometheus on loopback scraping one target every second, the rules loaded."""

    def __init__(self, target: str, data: Path):
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(DEPLOY / "alerts.yml")],
            "scrape_configs": [{"job_name": "public-status",
                                "static_configs": [{"targets": [target]}]}],
        }
        (data / "prometheus.yml").write_text(json.dumps(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={data / 'prometheus.yml'}",
             f"--storage.tsdb.path={data / 'tsdb'}", f"--web.listen-address={self.url[7:]}",
             "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for(self._ready, timeout=20, interval=0.1)

    def _ready(self) -> bool:
        assert self.process.poll() is None, self.process.stderr.read()
        try:
            return requests.get(self.url + "/-/ready", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    def api(self, path: str, **params) -> dict | list:
        answer = requests.get(self.url + "/api/v1/" + path, params=params, timeout=5).json()
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list:
        return self.api("query", query=expr)["result"]

    def rules(self) -> list[dict]:
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def alerts(self) -> list[dict]:
        return self.api("alerts")["alerts"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def scrape(pg, data: Path):
    """(the real service, a real Prometheus scraping it) once it has been scraped twice,
    so that rates have two points. Prometheus starts first: it takes up new targets only
    every 5 s, and the service starts meanwhile."""
    port = free_port()
    prometheus = Prometheus(f"127.0.0.1:{port}", data)
    try:
        service = Service({"DATABASE_URL": pg.reader_url, **FAST}, port=port)
    except BaseException:
        prometheus.stop()
        raise
    try:
        wait_for(lambda: prometheus.query("count_over_time(up[1m]) >= 2"), timeout=15,
                 interval=0.2)
    except BaseException:
        prometheus.stop()
        service.stop()
        raise
    return service, prometheus


@pytest.fixture(scope="module")
def scraped(pg, tmp_path_factory):
    """A service and its Prometheus, shared by the tests that only read them."""
    service, prometheus = scrape(pg, tmp_path_factory.mktemp("prometheus"))
    yield service, prometheus
    prometheus.stop()
    service.stop()


@pytest.fixture
def scraped_alone(pg, tmp_path):
    """A service and its Prometheus of one test's own."""
    service, prometheus = scrape(pg, tmp_path)
    yield service, prometheus
    prometheus.stop()
    service.stop()


def settled(prometheus: Prometheus) -> list[dict] | None:
    """The rules once each has been evaluated since the target was first scraped (none
    is 'unknown', and TargetsMissing, pending before that scrape, has been dropped)."""
    rules = prometheus.rules()
    if all(rule["health"] != "unknown" for rule in rules) and not prometheus.alerts():
        return rules
    return None


@pytest.mark.e2e
def test_a_real_prometheus_evaluates_every_rule_and_none_fires_on_a_healthy_service(scraped):
    _, prometheus = scraped
    rules = wait_for(lambda: settled(prometheus), timeout=10, interval=0.2)
    assert sorted(rule["name"] for rule in rules) == sorted(rule["alert"] for rule in ALERTS)
    assert [(r["name"], r["lastError"]) for r in rules if r["health"] != "ok"] == []
    time.sleep(1.5)     # one more evaluation: still nothing pending or firing
    assert prometheus.alerts() == []


@pytest.mark.e2e
def test_every_dashboard_query_returns_a_series_from_a_real_prometheus(scraped):
    service, prometheus = scraped
    waiting = [e for e in dashboard_exprs() if waits_for_the_lead(e)]
    for expr in dashboard_exprs():
        if expr not in waiting:
            assert prometheus.query(as_promql(expr, rate_interval="10s")), expr
    # the variables: Grafana's label_values(public_status_open_streams{job=~"$job"}, instance)
    instances = prometheus.api("label/instance/values", **{
        "match[]": 'public_status_open_streams{job=~".*"}'})
    assert instances == [service.url[7:]]
    assert len(waiting) < len(dashboard_exprs())


@pytest.mark.e2e
def test_the_service_stopping_makes_its_instance_scrape_alert_pending(scraped_alone):
    service, prometheus = scraped_alone
    wait_for(lambda: settled(prometheus), timeout=10, interval=0.2)
    service.stop()
    [alert] = wait_for(prometheus.alerts, timeout=10, interval=0.2)
    assert (alert["labels"], alert["state"]) == (
        {"alertname": "PublicStatusScrapeFailing", "severity": "critical",
         "job": "public-status", "instance": service.url[7:]}, "pending")
