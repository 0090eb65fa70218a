"""exporters/: the files other systems consume, checked against the real thing.

- Prometheus rules: ``promtool check`` and ``promtool test rules`` (unit tests in
  rules_test.yml cover every alert firing and not firing, every recording rule's value).
- Grafana dashboards: valid, unique panel ids, one datasource variable, and every metric a query
  names is served by a running vcmon (or recorded by rules.yml).
- The contract end to end: a real Prometheus with rules.yml scrapes a vcmon probing the province
  lab; the per-district recording rules match the lab inventory and every dashboard query
  returns data through the HTTP API.
- JSON schemas of the alert event and the native webhook envelope: the committed files equal
  what exporters/schemas/generate.py makes from vcmon.alerts.model, and real events match them.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ProvinceLabFactory
from tests.support.helpers import free_port
from vcmon.alerts.model import (
    AlertEvent,
    Severity,
    Status,
    rfc3339,
)
from vcmon_lab.profiles import Profile

ROOT = Path(__file__).resolve().parents[2]
EXPORTERS = ROOT / "exporters"
RULES = EXPORTERS / "prometheus" / "rules.yml"
RULES_TEST = EXPORTERS / "prometheus" / "rules_test.yml"
SCRAPE = EXPORTERS / "prometheus" / "scrape.yml"
ROUTE = EXPORTERS / "alertmanager" / "route.yml"
DASHBOARDS = sorted((EXPORTERS / "grafana").glob("*.json"))
SCHEMAS = EXPORTERS / "schemas"
GENERATOR = SCHEMAS / "generate.py"
REGENERATE = "regenerate with: .venv/bin/python exporters/schemas/generate.py --write"


def tool(name: str) -> str:
    """Path of a command; skip without it, or fail when ``CI`` is set."""
    path = shutil.which(name)
    if path is not None:
        return path
    reason = f"needs `{name}` (Debian package prometheus / prometheus-alertmanager: make debs)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so this is a failure, not a skip")
    pytest.skip(reason)


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=30, cwd=cwd, check=False)


def until(check: Callable[[], Any], within: float, what: str, poll: float = 0.2) -> Any:
    """Poll ``check()`` until it returns something truthy; fail with its last result."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        try:
            last = check()
        except (httpx.HTTPError, KeyError, ValueError) as exc:  # not up yet, or not yet there
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}; last: {last!r}")
        time.sleep(poll)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# -- Prometheus rules ----------------------------------------------------------------------------


def rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def test_promtool_check_rules() -> None:
    r = run(tool("promtool"), "check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules())} rules found" in r.stdout


def test_promtool_unit_tests_pass() -> None:
    r = run(tool("promtool"), "test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_scrape_example_is_valid_and_loopback_only() -> None:
    r = run(tool("promtool"), "check", "config", str(SCRAPE))
    assert r.returncode == 0, r.stdout + r.stderr
    targets = [t for job in load_yaml(SCRAPE)["scrape_configs"]
               for sc in job["static_configs"] for t in sc["targets"]]  # fmt: skip
    assert targets == ["127.0.0.1:9231"]


def test_alertmanager_route_example_is_valid_and_loopback_only() -> None:
    r = run(tool("amtool"), "check-config", str(ROUTE))
    assert r.returncode == 0, r.stdout + r.stderr
    doc = load_yaml(ROUTE)
    assert doc["route"]["group_by"] == ["district", "alertname"]
    urls = [c["url"] for rcv in doc["receivers"] for c in rcv.get("webhook_configs", [])]
    assert urls
    assert all(u.startswith("http://127.0.0.1:") for u in urls), urls


def test_every_rule_is_unit_tested_both_ways() -> None:
    """Each alert has a test where it fires and one where it does not; each recording rule's
    value is checked; each alert names a severity and says what is wrong."""
    doc = load_yaml(RULES_TEST)
    fired: set[str] = set()
    quiet: set[str] = set()
    checked: set[str] = set()
    for case in doc["tests"]:
        for t in case.get("alert_rule_test", []):
            (fired if t.get("exp_alerts") else quiet).add(t["alertname"])
        for t in case.get("promql_expr_test", []):
            checked.update(re.findall(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", t["expr"]))
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert alerts - fired == set(), "alerts never shown firing"
    assert alerts - quiet == set(), "alerts never shown not firing"
    assert recorded_names() - checked == set(), "recording rules whose value is not checked"
    for rule in rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {s.value for s in Severity}, rule["alert"]
            assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


# -- PromQL in dashboards ------------------------------------------------------------------------

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
             "unless", "bool", "offset", "inf", "nan"}  # fmt: skip
_LABEL_VALUES = re.compile(r"^\s*label_values\((?:(.*),\s*)?([A-Za-z_][A-Za-z0-9_]*)\)\s*$")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (functions, keywords, labels left out)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", "{}", s)
    s = re.sub(r"\[[^\]]*\]", "[]", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names: set[str] = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        before = s[m.start() - 1] if m.start() else " "
        if before.isdigit() or before in "._$":
            continue  # part of a number (1e-09) or a variable
        if s[m.end() :].lstrip().startswith("(") or m.group(0).lower() in _KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def test_metric_names_parser() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (district, le) (rate(vcmon_rtt_seconds_bucket{le="1e-3",'
        'endpoint="$endpoint"}[$__rate_interval]))) * on (endpoint) group_left (name) '
        "vcmon_endpoint_info or district:vcmon_up:ratio > bool 1e-09 unless time() - x"
    )
    assert metric_names(expr) == {
        "vcmon_rtt_seconds_bucket", "vcmon_endpoint_info", "district:vcmon_up:ratio", "x",
    }  # fmt: skip


def dashboard(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


def all_panels(doc: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in doc["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def panel_queries(doc: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(panel title, target) of every query of a dashboard."""
    for panel in all_panels(doc):
        for target in panel.get("targets", []):
            yield panel["title"], target


def variable_queries(doc: Mapping[str, Any]) -> list[tuple[str, str | None, str]]:
    """(name, series selector or None, label) of each label_values variable, in order."""
    out = []
    for var in doc["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = _LABEL_VALUES.match(query)
        assert m is not None, f"{var['name']}: only label_values(...) variables: {query}"
        out.append((var["name"], m.group(1), m.group(2)))
    return out


def test_dashboards_are_present() -> None:
    assert [p.name for p in DASHBOARDS] == [
        "vcmon-endpoint.json", "vcmon-pipeline.json", "vcmon-province.json",
    ]  # fmt: skip


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_is_importable_anywhere(path: Path) -> None:
    doc = dashboard(path)
    assert doc["uid"] == path.stem
    assert 36 <= doc["schemaVersion"] <= 41
    ids = [p["id"] for p in all_panels(doc)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {Counter(ids).most_common(3)}"
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    ds = variables["DS_PROMETHEUS"]
    assert (ds["type"], ds["query"]) == ("datasource", "prometheus")
    wanted = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    for panel in all_panels(doc):
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == wanted, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == wanted, panel["title"]
            assert target["expr"].strip(), panel["title"]
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == wanted, var["name"]
    # No data source uid of someone's Grafana hard-coded anywhere.
    assert '"uid": "${DS_PROMETHEUS}"' in path.read_text(encoding="utf-8")
    assert "__inputs" not in doc


def scraped_names(text: str) -> set[str]:
    """Every series name a /metrics page can yield, histograms and counters expanded."""
    names: set[str] = set()
    for fam in text_string_to_metric_families(text):
        names.update(s.name for s in fam.samples)
        if fam.type == "counter":
            names.add(fam.name + "_total")
        elif fam.type == "histogram":
            names.update(fam.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(fam.name)
    return names


LOOPBACK_CONFIG = """\
listen: 127.0.0.1:{port}
defaults: {{interval: 1.0, count: 3, spacing: 0.05, timeout: 0.5}}
endpoints:
  - {{id: tinh, name: Trung tâm tỉnh, address: 127.0.0.1, district: Tỉnh, level: province}}
  - {{id: ha-long, name: TP Hạ Long, address: 127.0.0.2, district: Hạ Long, level: district,
     parent: tinh}}
  - {{id: ha-long-a, name: Phường A, address: 127.0.0.3, district: Hạ Long, level: commune,
     parent: ha-long}}
"""


@pytest.fixture(scope="module")
def loopback_metrics(tmp_path_factory: pytest.TempPathFactory) -> str:
    """/metrics of a real `vcmon run` probing 127.0.0.x, once every endpoint had a round."""
    tmp = tmp_path_factory.mktemp("loopback")
    port = free_port()
    config = tmp / "vcmon.yaml"
    config.write_text(LOOPBACK_CONFIG.format(port=port), encoding="utf-8")
    log_path = tmp / "daemon.log"
    env = {**os.environ, "XDG_STATE_HOME": str(tmp / "state")}
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "vcmon", "run", "-c", str(config)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                return True  # exited: reported below
            return httpx.get(base + "/-/ready", timeout=2).status_code == 200

        until(ready, 20, "the loopback daemon's first rounds")
        if proc.poll() is not None:
            output = log_path.read_text(encoding="utf-8")
            if "cannot open an ICMP socket" in output and not os.environ.get("CI"):
                pytest.skip("this host allows no ICMP socket (root or ping_group_range)")
            pytest.fail(f"vcmon run exited {proc.returncode}:\n{output}")
        return httpx.get(base + "/metrics", timeout=5).text
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(10)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_metrics_are_served_by_vcmon(path: Path, loopback_metrics: str) -> None:
    served = scraped_names(loopback_metrics) | recorded_names()
    doc = dashboard(path)
    missing = {}
    for title, target in panel_queries(doc):
        unknown = metric_names(target["expr"]) - served
        if unknown:
            missing[title] = sorted(unknown)
    for name, selector, _ in variable_queries(doc):
        unknown = metric_names(selector or "") - served
        if unknown:
            missing[f"variable {name}"] = sorted(unknown)
    assert missing == {}


def test_rules_read_only_metrics_vcmon_serves(loopback_metrics: str) -> None:
    served = scraped_names(loopback_metrics) | recorded_names() | {"up"}
    unknown = {rule.get("alert") or rule["record"]: sorted(metric_names(rule["expr"]) - served)
               for rule in rules()}  # fmt: skip
    assert {k: v for k, v in unknown.items() if v} == {}


# -- the contract against a real Prometheus ----------------------------------------------------

LAB_INVENTORY = """\
defaults: {interval: 1.0, count: 3, spacing: 0.05, timeout: 0.5}
endpoints:
  - {id: tinh, name: UBND tỉnh, address: 127.10.0.1, district: Tỉnh, level: province}
  - {id: ba-che, name: Huyện Ba Chẽ, address: 127.10.5.1, district: Ba Chẽ, level: district,
     parent: tinh, labels: {link: microwave}}
  - {id: ba-che-a, name: Xã Đạp Thanh, address: 127.10.5.11, district: Ba Chẽ, level: commune,
     parent: ba-che}
  - {id: ba-che-b, name: Xã Thanh Lâm, address: 127.10.5.12, district: Ba Chẽ, level: commune,
     parent: ba-che}
  - {id: co-to, name: Huyện Cô Tô, address: 127.10.8.1, district: Cô Tô, level: district,
     parent: tinh, labels: {link: microwave}}
  - {id: co-to-a, name: Xã Đồng Tiến, address: 127.10.8.11, district: Cô Tô, level: commune,
     parent: co-to}
  - {id: ha-long, name: TP Hạ Long, address: 127.10.1.1, district: Hạ Long, level: district,
     parent: tinh}
  - {id: ha-long-a, name: Phường Bãi Cháy, address: 127.10.1.11, district: Hạ Long,
     level: commune, parent: ha-long}
  - {id: ha-long-b, name: Phường Hồng Gai, address: 127.10.1.12, district: Hạ Long,
     level: commune, parent: ha-long}
"""
DOWN_ROOM = "ha-long-b"  # answers nothing: its district is 2/3 up, and an alert goes out
SIZES = {"Tỉnh": 1, "Ba Chẽ": 3, "Cô Tô": 2, "Hạ Long": 3}
UP_RATIO = {"Tỉnh": 1.0, "Ba Chẽ": 1.0, "Cô Tô": 1.0, "Hạ Long": 2 / 3}
# What Grafana's $__… variables become; 1m spans the whole test at a 1 s scrape interval.
BUILTINS = {"__rate_interval": "1m", "__interval": "5s", "__range": "5m"}


class PromApi:
    """Prometheus's HTTP API, read the way Grafana reads it."""

    def __init__(self, base: str) -> None:
        self.base = base

    def _data(self, path: str, params: Mapping[str, str]) -> Any:
        r = httpx.get(self.base + path, params=params, timeout=5)
        body = r.json()
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant vector: [{"metric": {...}, "value": [t, "v"]}]."""
        data = self._data("/api/v1/query", {"query": expr})
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def by_district(self, expr: str) -> dict[str, float]:
        return {s["metric"]["district"]: float(s["value"][1]) for s in self.query(expr)}

    def query_range(self, expr: str, seconds: float) -> list[list[float]]:
        """Values of every series over the last ``seconds``, one list per series."""
        now = time.time()
        data = self._data("/api/v1/query_range", {"query": expr, "start": f"{now - seconds:.3f}",
                                                  "end": f"{now:.3f}", "step": "1"})  # fmt: skip
        return [[float(v) for _, v in s["values"]] for s in data["result"]]

    def label_values(self, label: str, selector: str | None) -> list[str]:
        params = {"match[]": selector} if selector else {}
        values: list[str] = self._data(f"/api/v1/label/{label}/values", params)
        return values


def regex_literal(value: str) -> str:
    """A value as a regular expression matching only itself, inside a PromQL string literal
    (so the backslash is doubled), as Grafana writes it for =~."""
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\\\1", value)


def substitute(expr: str, values: Mapping[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in values, f"unknown variable ${name} in {expr}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, expr)


def resolve_variables(api: PromApi, doc: Mapping[str, Any]) -> dict[str, str]:
    """Each label_values variable set to the first value Prometheus offers (as Grafana does)."""
    values = dict(BUILTINS)
    for name, selector, label in variable_queries(doc):
        options = api.label_values(label, substitute(selector, values) if selector else None)
        assert options, f"variable {name}: label_values gave nothing"
        values[name] = regex_literal(options[0])
    return values


def has_data(api: PromApi, expr: str, instant: bool) -> bool:
    """The query returns at least one finite value (instant now, or over the last 30 s)."""
    if instant:
        return any(math.isfinite(float(s["value"][1])) for s in api.query(expr))
    return any(math.isfinite(v) for series in api.query_range(expr, 30) for v in series)


def prometheus_config(target: str, tmp: Path) -> Path:
    path = tmp / "prometheus.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "global": {
                    "scrape_interval": "1s",
                    "scrape_timeout": "900ms",
                    "evaluation_interval": "1s",
                },
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {"job_name": "vcmon", "static_configs": [{"targets": [target]}]}
                ],
            }
        ),
        encoding="utf-8",
    )
    return path


@pytest.fixture
def stop_later() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test started: SIGTERM at the end, SIGKILL if they linger."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_prometheus_with_rules_and_dashboards_on_the_lab(
    province_lab: ProvinceLabFactory, tmp_path: Path, stop_later: list[subprocess.Popen[bytes]]
) -> None:
    prometheus = tool("prometheus")
    env = province_lab(LAB_INVENTORY, profiles={DOWN_ROOM: Profile(up=False)}, seed=3)
    listen = env.config.listen
    state = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    daemon = [sys.executable, "-m", "vcmon", "run", "-c", str(env.config_path),
              "--netns", env.lab.monitor]  # fmt: skip
    port = free_port()
    server = [prometheus, f"--config.file={prometheus_config(listen, tmp_path)}",
              f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
              "--log.level=warn"]  # fmt: skip
    with (tmp_path / "vcmon.log").open("wb") as log:  # console alerts too: never a full pipe
        for cmd, environ in ((daemon, state), (server, None)):
            stop_later.append(
                subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=environ)
            )

    def alive() -> None:
        for proc in stop_later:
            assert proc.poll() is None, (tmp_path / "vcmon.log").read_text(errors="replace")

    api = PromApi(f"http://127.0.0.1:{port}")

    def district_figures() -> bool:
        alive()
        return (
            api.by_district("count by (district) (vcmon_up)") == SIZES
            and api.by_district("district:vcmon_endpoints:count") == SIZES
            and api.by_district("district:vcmon_up:ratio") == pytest.approx(UP_RATIO)
        )

    until(district_figures, 25, "per-district figures in Prometheus matching the inventory")

    # The quality aggregates: one figure per district, the silent room counted as it should.
    def quality() -> dict[str, dict[str, float]]:
        alive()
        figures = {
            rule: api.by_district(rule)
            for rule in (
                "district:vcmon_loss_ratio:max",
                "district:vcmon_mos:min",
                "district:vcmon_jitter_seconds:avg",
                "district:vcmon_rtt_seconds:p95_5m",
            )
        }
        # p95 needs two scrapes of the histogram; jitter two answers in a round.
        return figures if all(set(f) == set(SIZES) for f in figures.values()) else {}

    figures = until(quality, 15, "every district in each quality recording rule")
    assert figures["district:vcmon_loss_ratio:max"]["Hạ Long"] == 1.0
    assert figures["district:vcmon_mos:min"]["Hạ Long"] == 1.0
    for district in set(SIZES) - {"Hạ Long"}:
        assert figures["district:vcmon_mos:min"][district] > 3.0, figures
    for district, p95 in figures["district:vcmon_rtt_seconds:p95_5m"].items():
        assert 0.0 < p95 < 0.5, (district, p95)

    # vcmon's engine confirms the silent room down; Prometheus's rule sees it (pending for 30 s),
    # and the console sink's delivery shows up in the pipeline metrics.
    def down_seen() -> bool:
        alive()
        pending = api.query('ALERTS{alertname="VcmonEndpointDown"}')
        return [s["metric"]["endpoint"] for s in pending] == [DOWN_ROOM] and bool(
            api.query('vcmon_notification_latency_seconds_count{sink="console"} > 0')
        )

    until(down_seen, 15, f"VcmonEndpointDown for {DOWN_ROOM} and a delivered notification")

    # Every panel of every dashboard returns data, variables set as Grafana would set them.
    queries = []
    for path in DASHBOARDS:
        doc = dashboard(path)
        values = resolve_variables(api, doc)
        for title, target in panel_queries(doc):
            expr = substitute(target["expr"], values)
            queries.append((f"{path.stem}: {title} [{target['refId']}]", expr,
                            bool(target.get("instant"))))  # fmt: skip
    assert len(queries) >= 40

    def without_data() -> list[str]:
        alive()
        return [f"{name}: {expr}" for name, expr, instant in queries
                if not has_data(api, expr, instant)]  # fmt: skip

    deadline = time.monotonic() + 15
    while missing := without_data():
        if time.monotonic() >= deadline:
            pytest.fail("panel queries without data:\n" + "\n".join(missing))
        time.sleep(0.5)


# -- JSON schemas of the alert contract ----------------------------------------------------------


def _load_generator() -> ModuleType:
    # exporters/ is not a package: load the generator script by its path.
    spec = importlib.util.spec_from_file_location("vcmon_schema_generator", GENERATOR)
    assert spec is not None, GENERATOR
    assert spec.loader is not None, GENERATOR
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generator = _load_generator()
GENERATED: dict[str, Callable[[], dict[str, Any]]] = generator.GENERATED
render: Callable[[Mapping[str, Any]], str] = generator.render
sample_event: Callable[..., AlertEvent] = generator.sample_event


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_schema_files_are_generated_from_the_code(name: str) -> None:
    path = SCHEMAS / name
    assert path.exists(), f"{path} is missing; {REGENERATE}"
    assert path.read_text(encoding="utf-8") == render(GENERATED[name]()), (
        f"{path} differs from what vcmon.alerts.model gives; {REGENERATE}"
    )


_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
}


def check(
    value: Any, schema: Mapping[str, Any], root: Mapping[str, Any], at: str = "$"
) -> list[str]:
    """Errors of ``value`` against the subset of JSON Schema the files above use."""
    if "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/"), ref
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        return check(value, target, root, at)
    if "oneOf" in schema:
        matching = [s for s in schema["oneOf"] if not check(value, s, root, at)]
        return [] if len(matching) == 1 else [f"{at}: matches {len(matching)} of oneOf"]
    errors = []
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](value) for t in types):
            return [f"{at}: {value!r} is not {'/'.join(types)}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{at}: {value!r} not in {schema['enum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{at}: shorter than {schema['minLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{at}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, int | float) and "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{at}: {value} < {schema['minimum']}")
    if isinstance(value, dict):
        errors += [f"{at}: missing {k}" for k in schema.get("required", []) if k not in value]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += check(value[key], sub, root, f"{at}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += check(item, schema["items"], root, f"{at}[{i}]")
    return errors


def validate(doc: Any, schema: Mapping[str, Any]) -> list[str]:
    """Errors of ``doc``: by the jsonschema package if it is installed, else by ``check``."""
    try:
        jsonschema = importlib.import_module("jsonschema")
    except ImportError:
        return check(doc, schema, schema)
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


def test_real_events_match_the_schemas() -> None:
    from vcmon.cli.outbox import test_events

    event = json.loads((SCHEMAS / "alert-event.schema.json").read_text(encoding="utf-8"))
    envelope = json.loads((SCHEMAS / "webhook-vcmon.schema.json").read_text(encoding="utf-8"))
    docs = [sample_event(s).to_json() for s in Status]
    docs += test_events("vcmon-hl1", 1_795_850_000.0)
    for doc in docs:
        assert validate(doc, event) == [], doc
        body = {"type": f"vcmon.alert.{doc['status']}", "timestamp": rfc3339(1_795_850_001.0),
                "data": doc}  # fmt: skip
        assert validate(body, envelope) == [], body


def test_grouped_bodies_match_their_schema() -> None:
    from vcmon.delivery.grouping import Grouper, GroupPolicy
    from vcmon.delivery.sinks.webhook_bodies import group_body_for

    schema = json.loads((SCHEMAS / "webhook-vcmon-group.schema.json").read_text(encoding="utf-8"))
    grouper = Grouper(GroupPolicy())
    for i, status in enumerate(Status, start=1):
        doc = sample_event(status).to_json() | {"seq": i, "alert_id": f"a{i}"}
        grouper.add(doc, i, 0.0)
    (note,) = grouper.due(30.0)
    body = json.loads(group_body_for("vcmon", note, 31.0))
    assert validate(body, schema) == [], body
    assert check(body | {"type": "vcmon.alert.firing"}, schema, schema) != []


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"status": "open"}, "$.status: 'open' not in"),
        ({"kind": "loss"}, "$.kind: 'loss' not in"),
        ({"seq": -1}, "$.seq: -1 < 0"),
        ({"ended_at": "yesterday"}, "$.ended_at: matches 0 of oneOf"),
        ({"measurements": {"rtt_ms": "1", "jitter_ms": None, "loss_pct": 0, "mos": 4.4}},
         "$.measurements.rtt_ms: '1' is not number/null"),
        ({"endpoint": {"id": "x"}}, "$.endpoint: missing name"),
    ],
)  # fmt: skip
def test_schema_rejects_what_breaks_the_contract(change: dict[str, Any], error: str) -> None:
    schema = json.loads((SCHEMAS / "alert-event.schema.json").read_text(encoding="utf-8"))
    doc = sample_event().to_json() | change
    errors = check(doc, schema, schema)
    assert any(e.startswith(error) for e in errors), errors
    assert validate(doc, schema) != []
