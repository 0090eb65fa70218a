"""deploy/: the systemd unit, the container image, the compose stack, the Kubernetes manifests.

Each file is read the way its consumer reads it (a unit parser with systemd's rules for
repeated keys, a Containerfile parser, YAML) and checked against the others and against
vcmon: commands parse with vcmon's own CLI, configs pass ``vcmon check``, ports, users,
paths and names agree between files. Where the real tool is here it has the last word:
``systemd-analyze verify`` and ``security``, ``promtool``, ``kubectl kustomize``,
``mosquitto``. A tool that is missing skips its test, or fails it when ``CI`` is set. The
image itself is built and run with Podman in test_container.py.

``test_runs_with_the_deployed_privileges`` starts vcmon as each deployment does, in a fresh
network namespace: the unit's capabilities (CAP_NET_RAW → a raw socket), or none and the
deployment's ``net.ipv4.ping_group_range`` (→ the ping socket), with the deployment's group,
and checks it with the image's HEALTHCHECK and /-/ready. The uid stays 0 there (the
interpreter under test may live where only root can read) but with securebits ``noroot`` a
uid 0 process holds only the capabilities given, like the deployed uid.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.helpers import wait_for
from vcmon import cli
from vcmon.alerts.runtime import state_path
from vcmon.config import ConfigError, load_config
from vcmon.http import auth as webauth

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "vcmon.service"
PING_DROP_IN = DEPLOY / "systemd" / "vcmon.service.d" / "ping-socket.conf"
PING_SYSCTL = DEPLOY / "systemd" / "99-vcmon-ping.conf"
CONTAINERFILE = DEPLOY / "container" / "Containerfile"
CONTAINER_CONFIG = DEPLOY / "container" / "vcmon.yaml"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
KUBE = DEPLOY / "kubernetes"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
IMAGE = f"vcmon:{VERSION}"
DYNAMIC_USER_GIDS = (61184, 65519)  # where systemd allocates DynamicUser= ids
PING_RANGE_MAX = 2147483647


def _unavailable(reason: str) -> None:
    """Skip, or fail when ``CI`` is set: CI never skips silently."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so this is a failure, not a skip")
    pytest.skip(reason)


def _tool(name: str, why: str = "") -> str:
    path = shutil.which(name)
    if path is None:
        _unavailable(f"needs {name}{why}")
        raise AssertionError("unreachable")
    return path


def _run(*argv: str, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kw)


# ---------------------------------------------------------------------------------------------
# Readers


Unit = dict[str, dict[str, list[str]]]


def parse_unit(*paths: Path) -> Unit:
    """Section → key → values of a unit and its drop-ins, in systemd's reading order: a key
    may be repeated (each assignment adds), an empty assignment empties the list, a trailing
    backslash continues the line, # and ; start comments."""
    unit: Unit = {}
    for path in paths:
        section: str | None = None
        pending = ""
        for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = raw.strip()
            if line.startswith(("#", ";")) or (not line and not pending):
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            line, pending = (pending + line).strip(), ""
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                unit.setdefault(section, {})
                continue
            key, equals, value = line.partition("=")
            assert section is not None, f"{path}:{number}: {raw!r} outside a section"
            assert equals, f"{path}:{number}: {raw!r} is not key=value"
            values = unit[section].setdefault(key.strip(), [])
            if value.strip():
                values.append(value.strip())
            else:
                values.clear()
    return unit


def one(unit: Unit, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key, [])
    assert len(values) == 1, f"[{section}] {key}= is set {len(values)} times: {values}"
    return values[0]


def capabilities(unit: Unit, key: str) -> set[str]:
    values = unit["Service"].get(key, [])
    assert not any(v.startswith("~") for v in values), f"{key}: write the caps kept, not dropped"
    return {cap for value in values for cap in value.split()}


@dataclass
class Stage:
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in the stage FROM {self.base}"
        return found[-1]


def parse_containerfile(path: Path = CONTAINERFILE) -> list[Stage]:
    """The build stages: FROM's image and each instruction (keyword, rest of the line), with
    continuation lines joined and comments left out."""
    stages: list[Stage] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line, pending = (pending + line).strip(), ""
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            stages.append(Stage(base=rest.split()[0]))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, rest))
    return stages


def exec_form(rest: str) -> list[str]:
    """A JSON-array instruction argument (CMD, ENTRYPOINT, HEALTHCHECK's CMD)."""
    value = json.loads(rest)
    assert isinstance(value, list), rest
    assert all(isinstance(v, str) for v in value), rest
    return value


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in stage.all("ENV"):
        for word in shlex.split(rest):
            key, equals, value = word.partition("=")
            assert equals, f"ENV {rest}: write KEY=value"
            env[key] = value
    return env


def healthcheck(stage: Stage) -> list[str]:
    words = stage.last("HEALTHCHECK")
    options, _, command = words.partition("CMD ")
    assert all(o.startswith("--") for o in options.split()), words
    return exec_form(command)


def yaml_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def compose() -> dict[str, Any]:
    (doc,) = yaml_docs(COMPOSE)
    assert isinstance(doc, dict)
    return doc


def kustomization() -> dict[str, Any]:
    (doc,) = yaml_docs(KUBE / "kustomization.yaml")
    assert isinstance(doc, dict)
    return doc


def manifests() -> dict[str, dict[str, Any]]:
    """kind → object, from the files kustomization.yaml lists (one object of each kind)."""
    found: dict[str, dict[str, Any]] = {}
    for name in kustomization()["resources"]:
        for doc in yaml_docs(KUBE / name):
            assert doc["kind"] not in found, f"two {doc['kind']} objects"
            found[doc["kind"]] = doc
    return found


def deployment_container() -> dict[str, Any]:
    (container,) = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def bind_mounts(service: str) -> dict[str, Path]:
    """Container path → host path of a compose service's bind mounts (named volumes left out)."""
    mounts: dict[str, Path] = {}
    for volume in compose()["services"][service].get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith((".", "/")):
            mounts[target] = (COMPOSE.parent / source).resolve()
    return mounts


def mirror(service: str, into: Path) -> Path:
    """Copy a compose service's bind mounts to where the container sees them, under ``into``."""
    for target, source in bind_mounts(service).items():
        dest = into / target.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, dest)
        else:
            shutil.copyfile(source, dest)
    return into


def listen_port(config_text: str) -> int:
    return int(str(yaml.safe_load(config_text)["listen"]).rpartition(":")[2])


def parsed_command(argv: list[str]) -> tuple[Any, str]:
    """vcmon's own CLI parses ``argv`` (without the program): its handler and -c path."""
    args = cli.parser().parse_args(argv)
    return args.func, args.config


def ping_range(value: str) -> tuple[int, int]:
    low, high = (int(v) for v in value.split())
    assert 0 <= low <= high <= PING_RANGE_MAX, value
    return low, high


def sysctl_file(path: Path) -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith(("#", ";")):
            key, equals, value = line.partition("=")
            assert equals, line
            settings[key.strip()] = value.strip()
    return settings


# ---------------------------------------------------------------------------------------------
# systemd


HARDENING = {
    "Type": "exec",
    "DynamicUser": "yes",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX AF_NETLINK",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "StateDirectory": "vcmon",
    "ConfigurationDirectory": "vcmon",
    "Restart": "on-failure",
    "ExecReload": "/bin/kill -HUP $MAINPID",
}


def test_unit_is_hardened() -> None:
    unit = parse_unit(UNIT)
    got = {key: unit["Service"].get(key) for key in HARDENING}
    assert got == {key: [value] for key, value in HARDENING.items()}
    assert unit["Service"]["SystemCallFilter"][0] == "@system-service"
    assert "User" not in unit["Service"]  # DynamicUser's own user, never root


def test_unit_runs_vcmon_and_checks_first() -> None:
    unit = parse_unit(UNIT)
    start = shlex.split(one(unit, "Service", "ExecStart"))
    pre = shlex.split(one(unit, "Service", "ExecStartPre"))
    assert Path(start[0]).is_absolute(), start
    assert Path(start[0]).name == "vcmon", start
    assert pre[0] == start[0]
    handler, config = parsed_command(start[1:])
    assert handler is cli.daemon.cmd_run
    assert parsed_command(pre[1:]) == (cli.daemon.cmd_check, config)
    # The config is in the directory ConfigurationDirectory= makes: /etc/<it>.
    assert Path(config).parent == Path("/etc") / one(unit, "Service", "ConfigurationDirectory")
    # vcmon stops within 2 s of SIGTERM; the unit waits a little longer, not minutes.
    assert 2 < int(one(unit, "Service", "TimeoutStopSec")) <= 30


def test_unit_capability_is_cap_net_raw_alone() -> None:
    unit = parse_unit(UNIT)
    assert capabilities(unit, "AmbientCapabilities") == {"CAP_NET_RAW"}
    assert capabilities(unit, "CapabilityBoundingSet") == {"CAP_NET_RAW"}


def test_ping_socket_drop_in_leaves_no_capability() -> None:
    unit = parse_unit(UNIT, PING_DROP_IN)
    assert capabilities(unit, "AmbientCapabilities") == set()
    assert capabilities(unit, "CapabilityBoundingSet") == set()
    assert unit["Service"]["ExecStart"] == parse_unit(UNIT)["Service"]["ExecStart"]


def test_ping_sysctl_covers_the_units_dynamic_user() -> None:
    settings = sysctl_file(PING_SYSCTL)
    assert list(settings) == ["net.ipv4.ping_group_range"]
    low, high = ping_range(settings["net.ipv4.ping_group_range"])
    assert low <= DYNAMIC_USER_GIDS[0]
    assert DYNAMIC_USER_GIDS[1] <= high


@pytest.fixture(scope="module")
def systemd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file-system root for ``systemd-analyze --root``: this host's system units, the unit
    under test, and stand-ins for the programs it runs (verify checks they are executable;
    on a real host they are /opt/vcmon's and util-linux's)."""
    _tool("systemd-analyze", " (Debian package systemd)")
    units = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
                  if (p / "sysinit.target").exists()), None)  # fmt: skip
    if units is None:
        _unavailable("needs systemd's unit files (sysinit.target) for systemd-analyze verify")
        raise AssertionError("unreachable")
    root = tmp_path_factory.mktemp("root")
    shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True)
    system = root / "etc/systemd/system"
    system.mkdir(parents=True)
    shutil.copy(UNIT, system)
    service = parse_unit(UNIT)["Service"]
    for key in ("ExecStartPre", "ExecStart", "ExecReload"):
        for command in service[key]:
            program = root / shlex.split(command)[0].lstrip("/")
            program.parent.mkdir(parents=True, exist_ok=True)
            program.write_text("#!/bin/sh\n")
            program.chmod(0o755)
    return root


def _install_drop_in(root: Path, present: bool) -> None:
    """Put ping-socket.conf in the root's vcmon.service.d, or take it away."""
    dropins = root / "etc/systemd/system" / PING_DROP_IN.parent.name
    shutil.rmtree(dropins, ignore_errors=True)
    if present:
        dropins.mkdir()
        shutil.copy(PING_DROP_IN, dropins)


@pytest.mark.parametrize("drop_in", [False, True], ids=["unit", "with-ping-socket-drop-in"])
def test_systemd_analyze_verify(systemd_root: Path, drop_in: bool) -> None:
    _install_drop_in(systemd_root, drop_in)
    r = _run("systemd-analyze", "verify", "--man=no", f"--root={systemd_root}", UNIT.name)
    # verify exits 0 on unknown keys and unparsable values too; it only warns. None allowed.
    assert (r.returncode, r.stdout + r.stderr) == (0, "")


def test_systemd_analyze_security(systemd_root: Path) -> None:
    _install_drop_in(systemd_root, False)
    offline = ("--offline=yes", f"--root={systemd_root}")
    r = _run("systemd-analyze", "security", *offline, "--json=short", UNIT.name)
    assert r.returncode == 0, r.stderr
    checks = {c["name"]: c["set"] for c in json.loads(r.stdout)}
    kept = [name for name, dropped in checks.items()
            if name.startswith("CapabilityBoundingSet=~") and not dropped]  # fmt: skip
    # The one capability group still held is NET_RAW's (the check groups it with two others).
    assert kept == ["CapabilityBoundingSet=~CAP_NET_(BIND_SERVICE|BROADCAST|RAW)"]
    assert checks["User=/DynamicUser="] is True
    text = _run("systemd-analyze", "security", *offline, UNIT.name).stdout
    m = re.search(r"Overall exposure level for vcmon\.service: ([\d.]+)", text)
    assert m is not None, text
    assert float(m[1]) <= 2.0, text  # "OK"; the hardened unit scores 1.6


# ---------------------------------------------------------------------------------------------
# Container image


def test_containerfile_runs_vcmon_as_non_root() -> None:
    stages = parse_containerfile()
    final = stages[-1]
    user = final.last("USER")
    uid, _, gid = user.partition(":")
    for number in (uid, gid):  # numeric, so Kubernetes' runAsNonRoot can tell
        assert number.isdigit(), f"USER {user}: a numeric uid:gid"
        assert int(number) != 0, f"USER {user}: not root"
    assert exec_form(final.last("ENTRYPOINT")) == ["vcmon"]
    command = exec_form(final.last("CMD"))
    assert parsed_command(command) == (cli.daemon.cmd_run, "/etc/vcmon/vcmon.yaml")
    # The config that CMD reads is the container config, copied there.
    assert f"{CONTAINER_CONFIG.relative_to(ROOT)} /etc/vcmon/vcmon.yaml" in final.all("COPY")
    env = env_of(final)
    assert env["STATE_DIRECTORY"] == "/var/lib/vcmon"
    assert set(exec_form(final.last("VOLUME"))) == {env["STATE_DIRECTORY"], "/etc/vcmon"}
    port = listen_port(CONTAINER_CONFIG.read_text(encoding="utf-8"))
    assert final.all("EXPOSE") == [str(port)]


def test_containerfile_healthcheck_asks_healthy() -> None:
    check = healthcheck(parse_containerfile()[-1])
    assert check[:2] == ["python", "-c"]  # no curl in python:*-slim
    port = listen_port(CONTAINER_CONFIG.read_text(encoding="utf-8"))
    assert f"http://127.0.0.1:{port}/-/healthy" in check[2]


def test_containerfile_base_is_pinned_python_slim() -> None:
    stages = parse_containerfile()
    for stage in stages:
        name, _, tag = stage.base.partition(":")
        assert tag not in ("", "latest"), f"FROM {stage.base}: pin a tag"
        assert name == "python", stage.base
        assert tag.startswith("3.11-slim"), stage.base


def test_containerfile_copies_what_the_context_sends() -> None:
    """Each COPY source exists in the repository and is let through the ignore file."""
    ignore = (CONTAINERFILE.parent / "Containerfile.dockerignore").read_text(encoding="utf-8")
    allowed = {line[1:].rstrip("/") for line in ignore.splitlines() if line.startswith("!")}
    assert "*" in ignore.splitlines()
    for stage in parse_containerfile():
        for rest in stage.all("COPY"):
            if rest.startswith("--from="):
                continue
            *sources, _dest = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert source.rstrip("/") in allowed, f"COPY {source}: the ignore file drops it"


# ---------------------------------------------------------------------------------------------
# Configs


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _check(config: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main(["check", "-c", str(config)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "config OK" in out
    return out


def test_container_config_passes_vcmon_check(capsys: pytest.CaptureFixture[str]) -> None:
    out = _check(CONTAINER_CONFIG, capsys)
    # 0.0.0.0 is accepted by the listen check: a container's port must be reachable.
    assert "listen: http://0.0.0.0:9231/metrics" in out
    config = load_config(CONTAINER_CONFIG, env={})
    assert config.instance == "vcmon"  # stable, not the container's host name
    assert sorted(ep.address for ep in config.endpoints) == ["127.0.0.1", "::1"]


def test_compose_config_passes_vcmon_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compose service's /etc/vcmon, as its mounts make it, passes `vcmon check`."""
    service = compose()["services"]["vcmon"]
    for key, value in service.get("environment", {}).items():
        monkeypatch.setenv(key, str(value))
    etc = mirror("vcmon", tmp_path) / "etc/vcmon/vcmon.yaml"
    out = _check(etc, capsys)
    assert "listen: http://0.0.0.0:9231/metrics" in out
    config = load_config(etc)
    assert len(config.endpoints) == 231
    assert all(_is_loopback(ep.address) for ep in config.endpoints)
    mqtt = [sink for sink in config.sinks if sink.type == "mqtt"]
    assert [(s.host, s.port) for s in mqtt] == [("mosquitto", 1883)]
    assert "mosquitto" in compose()["services"]


def test_configmap_holds_the_container_config() -> None:
    data = manifests()["ConfigMap"]["data"]
    assert data == {"vcmon.yaml": CONTAINER_CONFIG.read_text(encoding="utf-8")}


# ---------------------------------------------------------------------------------------------
# Compose stack


def test_compose_publishes_on_loopback_only() -> None:
    published = []
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            if isinstance(port, dict):  # long syntax
                host = port.get("host_ip")
            else:  # HOST:PORT:CONTAINER_PORT; without HOST, every address of the machine
                parts = str(port).split(":")
                host = parts[0] if len(parts) == 3 else None
            assert host == "127.0.0.1", f"{name}: port {port} is not bound to 127.0.0.1"
            published.append(name)
    assert sorted(published) == ["grafana", "mosquitto", "prometheus", "vcmon"]


def test_compose_images_are_pinned_and_vcmon_is_built_here() -> None:
    services = compose()["services"]
    for name, service in services.items():
        image = service["image"]
        assert image.rpartition(":")[2] not in ("", "latest"), f"{name}: {image}: pin a tag"
    vcmon = services["vcmon"]
    assert vcmon["image"] == IMAGE
    context = (COMPOSE.parent / vcmon["build"]["context"]).resolve()
    assert context == ROOT
    assert (context / vcmon["build"]["dockerfile"]).resolve() == CONTAINERFILE
    for name in services:
        for source in bind_mounts(name).values():
            assert source.exists(), f"{name}: mounts {source}, which does not exist"


def test_compose_vcmon_keeps_state_and_privileges_small() -> None:
    vcmon = compose()["services"]["vcmon"]
    assert "vcmon-state:/var/lib/vcmon" in vcmon["volumes"]
    assert vcmon["cap_drop"] == ["ALL"]
    assert vcmon["cap_add"] == ["NET_RAW"]
    assert vcmon["read_only"] is True
    gid = int(parse_containerfile()[-1].last("USER").partition(":")[2])
    low, high = ping_range(vcmon["sysctls"]["net.ipv4.ping_group_range"])
    assert low <= gid <= high


def test_compose_prometheus_scrapes_vcmon(tmp_path: Path) -> None:
    etc = mirror("prometheus", tmp_path)
    (config,) = yaml_docs(etc / "etc/prometheus/prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "vcmon"  # exporters/prometheus/rules.yml's up{job="vcmon"}
    port = listen_port((COMPOSE.parent / "vcmon.yaml").read_text(encoding="utf-8"))
    assert [t for sc in job["static_configs"] for t in sc["targets"]] == [f"vcmon:{port}"]
    r = _run(_tool("promtool", " (Debian package prometheus)"), "check", "config",
             str(etc / "etc/prometheus/prometheus.yml"))  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 1 rule files found" in r.stdout + r.stderr  # exporters' rules.yml


def test_compose_grafana_is_provisioned_from_exporters() -> None:
    mounts = bind_mounts("grafana")
    exporters = (ROOT / "exporters" / "grafana").resolve()
    assert mounts["/etc/grafana/provisioning/dashboards"] == exporters / "provisioning/dashboards"
    # The provider reads the path where the dashboards are mounted.
    (provider_file,) = (exporters / "provisioning/dashboards").glob("*.yml")
    (provisioning,) = yaml_docs(provider_file)
    (provider,) = provisioning["providers"]
    dashboards = mounts[provider["options"]["path"]]
    assert sorted(p.name for p in dashboards.glob("*.json")) == sorted(
        p.name for p in exporters.glob("*.json")
    )
    assert len(list(dashboards.glob("*.json"))) >= 1
    # The datasource reaches the compose network's Prometheus, under exporters' uid.
    ours = mounts["/etc/grafana/provisioning/datasources/vcmon-prometheus.yml"]
    (datasource,) = yaml_docs(ours)[0]["datasources"]
    theirs = yaml_docs(next((exporters / "provisioning/datasources").glob("*.yml")))[0]
    assert datasource["uid"] == theirs["datasources"][0]["uid"]
    assert datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in compose()["services"]


def test_compose_mosquitto_config_starts_a_broker(tmp_path: Path, require_root: None) -> None:
    """mosquitto accepts the config and listens on 1883 (in a namespace of its own, with the
    data directory moved under tmp_path)."""
    mosquitto = _tool("mosquitto", " (Debian package mosquitto)")
    mounts = bind_mounts("mosquitto")
    text = mounts["/mosquitto/config/mosquitto.conf"].read_text(encoding="utf-8")
    text = text.replace("/mosquitto/data/", f"{tmp_path}/")
    for inside in ("/mosquitto/config/passwd", "/mosquitto/config/acl"):
        assert inside in text, f"{inside} is mounted but not used"
        text = text.replace(inside, str(mounts[inside]))
    (tmp_path / "mosquitto.conf").write_text(text, encoding="utf-8")
    with _in_new_netns([mosquitto, "-c", str(tmp_path / "mosquitto.conf")], tmp_path) as proc:
        connect = "import socket; socket.create_connection(('127.0.0.1', 1883), timeout=2).close()"
        wait_for(lambda: _netns_run(proc, [sys.executable, "-c", connect]).returncode == 0,
                 20, "mosquitto to listen on 1883")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Kubernetes


def test_kustomization_lists_every_manifest_but_the_optional_one() -> None:
    listed = set(kustomization()["resources"])
    files = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    assert files - listed == {"servicemonitor.yaml"}
    assert listed <= files
    optional = (KUBE / "servicemonitor.yaml").read_text(encoding="utf-8")
    assert "OPTIONAL" in optional
    assert "Prometheus operator" in optional
    assert set(manifests()) == {
        "Namespace", "ConfigMap", "Secret", "PersistentVolumeClaim", "Deployment", "Service",
        "NetworkPolicy",
    }  # fmt: skip


def test_kubernetes_objects_share_one_namespace() -> None:
    namespace = kustomization()["namespace"]
    for kind, obj in manifests().items():
        if kind == "Namespace":
            assert obj["metadata"]["name"] == namespace
        else:
            assert obj["metadata"]["namespace"] == namespace, kind


def test_deployment_security_context() -> None:
    deployment = manifests()["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = deployment_container()
    uid = int(parse_containerfile()[-1].last("USER").partition(":")[0])
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # one writer of the state
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == uid
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}  # the ping socket needs none
    sysctls = {s["name"]: s["value"] for s in pod["securityContext"]["sysctls"]}
    low, high = ping_range(sysctls["net.ipv4.ping_group_range"])
    assert low <= pod["securityContext"]["runAsGroup"] <= high


# Pod Security Standards, "restricted" (kubernetes.io/docs/concepts/security/pod-security-
# standards): the checks that apply to this pod's fields.
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports", "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip


def test_deployment_meets_pod_security_restricted() -> None:
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    problems = []
    problems += [k for k in ("hostNetwork", "hostPID", "hostIPC") if pod.get(k)]
    if any("hostPath" in v for v in pod.get("volumes", [])):
        problems.append("hostPath volume")
    for name in (s["name"] for s in pod["securityContext"].get("sysctls", [])):
        if name not in SAFE_SYSCTLS:
            problems.append(f"unsafe sysctl {name}")
    pod_seccomp = pod["securityContext"].get("seccompProfile", {}).get("type")
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c.get("securityContext", {})
        if sc.get("privileged"):
            problems.append("privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append("allowPrivilegeEscalation not false")
        if not (sc.get("runAsNonRoot") or pod["securityContext"].get("runAsNonRoot")):
            problems.append("runAsNonRoot not set")
        if sc.get("runAsUser", pod["securityContext"].get("runAsUser")) == 0:
            problems.append("runAsUser 0")
        if sc.get("seccompProfile", {}).get("type", pod_seccomp) not in (
            "RuntimeDefault",
            "Localhost",
        ):
            problems.append("seccompProfile")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            problems.append("capabilities not dropping ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"capabilities added: {caps['add']}")
        if any("hostPort" in p for p in c.get("ports", [])):
            problems.append("hostPort")
    assert problems == []


def test_deployment_runs_vcmon_with_config_state_and_probes() -> None:
    kinds = manifests()
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    container = deployment_container()
    assert container["image"] == IMAGE
    handler, config = parsed_command(container["args"])
    assert handler is cli.daemon.cmd_run
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    env = {e["name"]: e["value"] for e in container["env"]}
    # -c names the ConfigMap's key in the directory it is mounted on.
    assert volumes["config"]["configMap"]["name"] == kinds["ConfigMap"]["metadata"]["name"]
    assert Path(config) == Path(mounts["config"]) / "vcmon.yaml"
    assert "vcmon.yaml" in kinds["ConfigMap"]["data"]
    # State on the claim, where STATE_DIRECTORY says; /tmp writable despite the read-only root.
    claim = kinds["PersistentVolumeClaim"]["metadata"]["name"]
    assert volumes["state"]["persistentVolumeClaim"]["claimName"] == claim
    assert mounts["state"] == env["STATE_DIRECTORY"]
    assert "emptyDir" in volumes[next(n for n, p in mounts.items() if p == "/tmp")]
    (port,) = container["ports"]
    assert port["containerPort"] == listen_port(kinds["ConfigMap"]["data"]["vcmon.yaml"])
    assert container["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": port["name"]}


def test_service_selects_the_pod() -> None:
    kinds = manifests()
    service = kinds["Service"]
    pod_labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    (container_port,) = deployment_container()["ports"]
    assert port["port"] == 9231
    assert port["targetPort"] == container_port["name"]
    (monitor,) = yaml_docs(KUBE / "servicemonitor.yaml")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [port["name"]]


WEB_PASSWORD = "deploy-test-password"


def filled_web_config() -> str:
    """secret.yaml's web.yml with every placeholder hash replaced by one of WEB_PASSWORD."""
    import bcrypt

    text = manifests()["Secret"]["stringData"]["web.yml"]
    hashed = bcrypt.hashpw(WEB_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    return str(text).replace("REPLACE-with-a-bcrypt-hash", hashed)


def test_secret_is_the_web_config_the_deployment_reads(tmp_path: Path) -> None:
    kinds = manifests()
    container = deployment_container()
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in container["env"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    secret = kinds["Secret"]
    (name,) = (n for n, v in volumes.items() if "secret" in v)
    assert volumes[name]["secret"]["secretName"] == secret["metadata"]["name"]
    assert mounts[name]["readOnly"] is True
    where = Path(env["VCMON_WEB_CONFIG_FILE"])
    assert where.parent == Path(mounts[name]["mountPath"])
    assert where.name in secret["stringData"]
    # The ConfigMap's config takes the path from the environment.
    config = tmp_path / "vcmon.yaml"
    config.write_text(kinds["ConfigMap"]["data"]["vcmon.yaml"], encoding="utf-8")
    (tmp_path / "web.yml").write_text(secret["stringData"]["web.yml"], encoding="utf-8")
    loaded = load_config(config, env={"VCMON_WEB_CONFIG_FILE": str(tmp_path / "web.yml")})
    assert webauth.web_config_path(loaded) == tmp_path / "web.yml"
    # As shipped, the placeholders are refused by name; filled in, the roles are as documented.
    with pytest.raises(ConfigError, match=r"basic_auth_users\.prometheus: expected a bcrypt"):
        webauth.load_web_config(tmp_path / "web.yml")
    (tmp_path / "web.yml").write_text(filled_web_config(), encoding="utf-8")
    web = webauth.load_web_config(tmp_path / "web.yml")
    assert web.role_of("prometheus") is webauth.Role.READ
    assert web.role_of("ops") is webauth.Role.WRITE


def test_network_policy_admits_only_prometheus_to_the_port() -> None:
    kinds = manifests()
    policy = kinds["NetworkPolicy"]["spec"]
    pod_labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    (peer,) = rule["from"]  # one peer holding both selectors: Prometheus pods in monitoring
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    (container_port,) = deployment_container()["ports"]
    assert rule["ports"] == [{"protocol": "TCP", "port": container_port["name"]}]


def test_compose_prometheus_authenticates_as_a_reader() -> None:
    import bcrypt

    web = webauth.load_web_config(bind_mounts("vcmon")["/etc/vcmon/web.yml"])
    (job,) = yaml_docs(COMPOSE.parent / "prometheus.yml")[0]["scrape_configs"]
    user = job["basic_auth"]["username"]
    password_file = bind_mounts("prometheus")[job["basic_auth"]["password_file"]]
    password = password_file.read_text(encoding="utf-8").strip()
    assert bcrypt.checkpw(password.encode(), web.users[user])
    assert web.role_of(user) is webauth.Role.READ
    assert web.role_of("admin") is webauth.Role.WRITE


def test_kubectl_kustomize_renders() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("needs kubectl (kubectl kustomize renders kustomization.yaml offline)")
    r = _run(kubectl, "kustomize", str(KUBE))
    assert r.returncode == 0, r.stderr
    rendered = {doc["kind"]: doc for doc in yaml.safe_load_all(r.stdout) if doc}
    assert set(rendered) == set(manifests())
    assert rendered["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE


# ---------------------------------------------------------------------------------------------
# Every file


DEPLOY_FILES = sorted(p for p in DEPLOY.rglob("*") if p.is_file())
YAML_FILES = [p for p in DEPLOY_FILES if p.suffix in (".yaml", ".yml")]


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    assert yaml_docs(path)


@pytest.mark.parametrize("path", DEPLOY_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_address_literals_are_loopback(path: Path) -> None:
    """Only loopback and the wildcard (0.0.0.0, ::) are written in deploy/, comments too."""
    text = path.read_text(encoding="utf-8")
    # Address-like tokens (IPv4 and IPv6), and IPv4 addresses glued to a port or a path.
    tokens = re.findall(r"(?<![\w.:])[0-9A-Fa-f:.]*[:.][0-9A-Fa-f:.]+(?![\w.:])", text)
    tokens += re.findall(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])", text)
    literals = []
    for token in tokens:
        try:
            literals.append(ipaddress.ip_address(token))
        except ValueError:
            continue
    assert [str(ip) for ip in literals if not (ip.is_loopback or ip.is_unspecified)] == []


# ---------------------------------------------------------------------------------------------
# vcmon under each deployment's privileges


def _netns_run(proc: subprocess.Popen[str], argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in the network namespace of ``proc``."""
    return _run("nsenter", f"--net=/proc/{proc.pid}/ns/net", "--", *argv, timeout=30)


@dataclass(frozen=True)
class Deployed:
    """How a deployment starts vcmon: its arguments with the config at a path of this
    repository, its environment, group, capabilities and ping sysctl."""

    argv: list[str]
    env: Mapping[str, str]
    gid: int
    caps: frozenset[str]
    sysctl: Path | None
    icmp_mode: str
    ready_path: str | None = None  # what its readiness probe asks, if it has one
    authorization: str | None = None  # what reading the status API needs, with a web config


def _systemd(tmp_path: Path, drop_in: bool) -> Deployed:
    unit = parse_unit(UNIT, PING_DROP_IN) if drop_in else parse_unit(UNIT)
    argv = shlex.split(one(unit, "Service", "ExecStart"))[1:]
    # README: config/vcmon.yaml is what gets installed as /etc/vcmon/vcmon.yaml.
    argv = [str(ROOT / "config/vcmon.yaml") if a == "/etc/vcmon/vcmon.yaml" else a for a in argv]
    caps = capabilities(unit, "AmbientCapabilities") & capabilities(unit, "CapabilityBoundingSet")
    return Deployed(argv, {"STATE_DIRECTORY": str(tmp_path)}, DYNAMIC_USER_GIDS[0],
                    frozenset(caps), PING_SYSCTL if drop_in else None,
                    "dgram" if drop_in else "raw")  # fmt: skip


def _container(tmp_path: Path) -> Deployed:
    """Docker: no capability for a non-root user (no ambient ones), the ping sysctl of
    compose.yaml."""
    final = parse_containerfile()[-1]
    argv = exec_form(final.last("CMD"))
    argv = [str(CONTAINER_CONFIG) if a == "/etc/vcmon/vcmon.yaml" else a for a in argv]
    vcmon = compose()["services"]["vcmon"]
    sysctl = tmp_path / "compose-sysctl.conf"
    sysctl.write_text("".join(f"{k} = {v}\n" for k, v in vcmon["sysctls"].items()))
    gid = int(final.last("USER").partition(":")[2])
    env = {**env_of(final), "STATE_DIRECTORY": str(tmp_path)}
    env.pop("PATH")
    return Deployed(argv, env, gid, frozenset(), sysctl, "dgram")


def _kubernetes(tmp_path: Path) -> Deployed:
    """containerd or CRI-O: no ambient capability either; the pod's ping sysctl."""
    kinds = manifests()
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    container = deployment_container()
    config = tmp_path / "vcmon.yaml"
    config.write_text(kinds["ConfigMap"]["data"]["vcmon.yaml"], encoding="utf-8")
    argv = [str(config) if a.endswith("/vcmon.yaml") else a for a in container["args"]]
    sysctl = tmp_path / "pod-sysctl.conf"
    sysctl.write_text("".join(f"{s['name']} = {s['value']}\n"
                              for s in pod["securityContext"]["sysctls"]))  # fmt: skip
    env = {e["name"]: e["value"] for e in container["env"]} | {"STATE_DIRECTORY": str(tmp_path)}
    # The Secret as an admin fills it in, where VCMON_WEB_CONFIG_FILE points.
    web = tmp_path / "web.yml"
    web.write_text(filled_web_config(), encoding="utf-8")
    env["VCMON_WEB_CONFIG_FILE"] = str(web)
    gid = pod["securityContext"]["runAsGroup"]
    ready = container["readinessProbe"]["httpGet"]["path"]
    auth = "Basic " + base64.b64encode(f"prometheus:{WEB_PASSWORD}".encode()).decode()
    return Deployed(argv, env, gid, frozenset(), sysctl, "dgram", ready, auth)


@contextlib.contextmanager
def _in_new_netns(
    argv: list[str], log_dir: Path, prelude: str = "", env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """``argv`` running in a fresh network namespace (loopback up, then ``prelude``); stopped
    and reaped on exit. Yields once the process is in the namespace."""
    script = f'ip link set lo up && {prelude}exec "$@"'
    log = (log_dir / "netns.log").open("w", encoding="utf-8")
    proc = subprocess.Popen(["unshare", "--net", "--", "sh", "-c", script, "sh", *argv],
                            stdout=log, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env=None if env is None else dict(env))  # fmt: skip
    ours = os.readlink("/proc/self/ns/net")

    def moved() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode}: {_log(log_dir)}")
        return os.readlink(f"/proc/{proc.pid}/ns/net") != ours

    try:
        wait_for(moved, 10, "the process to enter its network namespace")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        log.close()


def _log(log_dir: Path) -> str:
    return (log_dir / "netns.log").read_text(encoding="utf-8")[-3000:]


def _systemd_ping_socket(tmp_path: Path) -> Deployed:
    return _systemd(tmp_path, drop_in=True)


def _systemd_raw(tmp_path: Path) -> Deployed:
    return _systemd(tmp_path, drop_in=False)


DEPLOYMENTS = {
    "systemd": _systemd_raw,
    "systemd-ping-socket": _systemd_ping_socket,
    "container": _container,
    "kubernetes": _kubernetes,
}


@pytest.mark.netns
@pytest.mark.parametrize("how", list(DEPLOYMENTS))
def test_runs_with_the_deployed_privileges(how: str, tmp_path: Path, require_root: None) -> None:
    """vcmon check and vcmon run as the deployment starts them (see the module docstring):
    the ICMP socket it gets, the HEALTHCHECK, the readiness probe, a clean stop on SIGTERM
    within TimeoutStopSec, the state file in STATE_DIRECTORY."""
    for tool in ("unshare", "setpriv", "nsenter"):
        _tool(tool, " (util-linux)")
    _tool("ip", " (iproute2)")
    _tool("sysctl", " (procps)")
    state = tmp_path / "state"
    state.mkdir()
    d = DEPLOYMENTS[how](state)
    spec = ",".join(["-all", *(f"+{c.removeprefix('CAP_').lower()}" for c in sorted(d.caps))])
    drop = ["setpriv", f"--regid={d.gid}", "--clear-groups",
            "--securebits=+noroot,+noroot_locked", f"--inh-caps={spec}",
            f"--ambient-caps={spec}", f"--bounding-set={spec}", "--no-new-privs", "--"]  # fmt: skip
    prelude = f"sysctl -q -p {shlex.quote(str(d.sysctl))} && " if d.sysctl else ""
    env = {**os.environ, **d.env, "NO_COLOR": "1", "COLUMNS": "200"}
    handler, config = parsed_command(d.argv)
    assert handler is cli.daemon.cmd_run

    # vcmon check (ExecStartPre, or by hand in a container) sees the same socket.
    script = f'ip link set lo up && {prelude}exec "$@"'
    check = _run("unshare", "--net", "--", "sh", "-c", script, "sh", *drop, sys.executable,
                 "-m", "vcmon", "check", "-c", config, env=env, cwd=ROOT)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"ICMP socket: {d.icmp_mode}" in check.stdout, check.stdout

    argv = [*drop, sys.executable, "-m", "vcmon", *d.argv]
    with _in_new_netns(argv, tmp_path, prelude, env) as proc:
        final = parse_containerfile()[-1]
        probe = [sys.executable if a == "python" else a for a in healthcheck(final)]

        def passes(argv: list[str]) -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"vcmon exited with {proc.returncode}: {_log(tmp_path)}")
            return _netns_run(proc, argv).returncode == 0

        wait_for(lambda: passes(probe), 30, "the image's HEALTHCHECK to pass")
        port = listen_port(Path(config).read_text(encoding="utf-8"))
        base = f"http://127.0.0.1:{port}"
        if d.ready_path:  # the first round of every endpoint, up to an interval
            ready = f"import urllib.request; urllib.request.urlopen('{base}{d.ready_path}')"
            wait_for(lambda: passes([sys.executable, "-c", ready]), 30, d.ready_path)
        headers = {"Authorization": d.authorization} if d.authorization else {}
        status = _netns_run(proc, [sys.executable, "-c", (
            "import json, urllib.request as u; "
            f"r = u.Request('{base}/api/v1/status', headers={headers!r}); "
            "print(json.load(u.urlopen(r))['icmp_mode'])"
        )])  # fmt: skip
        assert status.stdout.strip() == d.icmp_mode, status.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(int(one(parse_unit(UNIT), "Service", "TimeoutStopSec"))) == 0
    log = _log(tmp_path)
    assert f"icmp_mode={d.icmp_mode}" in next(
        (line for line in log.splitlines() if "event=started" in line), log
    )
    assert "Traceback" not in log
    assert state_path(load_config(Path(config), env=d.env), d.env).is_file()
