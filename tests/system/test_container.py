"""deploy/container/Containerfile, built and run: the image as the README deploys it.

The image is built once for this module with rootful Podman, from the repository root, on a
stand-in for its base image (tests/support/container_image.py says why and how), then run the ways
the deployment files run it: uid 10001, every capability dropped, read-only root with a tmpfs
on /tmp, no new privileges, a named volume for the state, and

* ``ping-socket``: no capability at all, ICMP through the ping socket that
  ``net.ipv4.ping_group_range`` opens (Docker's default, the Kubernetes pod's sysctl), with a
  config directory mounted read-only over /etc/vcmon as the README shows;
* ``raw``: ``--cap-add NET_RAW``, which Podman passes to the non-root user, so a raw socket,
  with the image's own config.

Each container runs in a network namespace the test makes, holding only ``lo`` and no route
out, and every configured endpoint is a loopback address: nothing leaves the machine. The
test asks for /-/healthy through the image's HEALTHCHECK (``podman healthcheck run``), checks
the process's uid and capabilities in /proc, /api/v1/status, /-/ready and the endpoints'
metrics, then stops the container and wants exit 0 within a few seconds of SIGTERM and the
alert state file in the volume.

Skipped (failed when ``CI`` is set) only when this machine cannot run containers at all: not
root, or podman, runc, debootstrap or ip missing (``make test`` installs them). A failure to
build or run the image is a failure.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.container_image import (
    CONTAINERFILE,
    Podman,
    base_images,
    build,
    import_stand_in,
    isolated_netns,
    missing_tools,
    stand_in_tarball,
)
from tests.support.helpers import wait_for
from vcmon.config import load_config
from vcmon_lab.netns import in_netns

from .test_deploy import (
    CONTAINER_CONFIG,
    PING_RANGE_MAX,
    VERSION,
    _unavailable,
    env_of,
    exec_form,
    healthcheck,
    listen_port,
    parse_containerfile,
)

# cold (debootstrap, then the build): about 1.5 min
pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

TAG = f"localhost/vcmon:{VERSION}"
INSTANCE = "vcmon-test"
CAP_NET_RAW = 13
# Opens the ping socket to every group, as Docker does by default (Podman: "0 0").
PING_SYSCTL = ("--sysctl", f"net.ipv4.ping_group_range=0 {PING_RANGE_MAX}")
STOP_WITHIN = 5.0  # seconds from SIGTERM to exit; vcmon itself promises 2


@dataclass(frozen=True)
class Image:
    podman: Podman
    tag: str
    build_log: Path


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    """The image built from the Containerfile, in a Podman of this module's own."""
    if os.geteuid() != 0:
        _unavailable("needs root (rootful Podman, network namespaces)")
    missing = missing_tools()
    if missing:
        _unavailable(
            f"cannot run containers here: needs {', '.join(missing)} (make test installs them)"
        )
    root = tmp_path_factory.mktemp("podman")
    podman = Podman.private(root)
    try:
        bases = base_images()
        assert bases == {"docker.io/library/python:3.11-slim-bookworm"}, (
            f"{CONTAINERFILE} starts FROM {bases}: tests/support/container_image.py has a stand-in "
            "only for python:3.11-slim-bookworm; teach it the new base"
        )
        tarball = stand_in_tarball()
        for base in bases:
            import_stand_in(podman, tarball, base)
        build(podman, TAG, root / "build.log")
        yield Image(podman, TAG, root / "build.log")
    finally:
        podman.close()


def test_image_is_what_the_containerfile_says(image: Image) -> None:
    """The built image's config (Podman keeps HEALTHCHECK in the docker format), the version
    inside it, and ``vcmon check`` on its own config with no capability."""
    final = parse_containerfile()[-1]
    built = image.podman.inspect("image", "inspect", image.tag)
    config = built["Config"]
    assert config["User"] == final.last("USER")
    assert config["Entrypoint"] == exec_form(final.last("ENTRYPOINT"))
    assert config["Cmd"] == exec_form(final.last("CMD"))
    assert "docker" in built["ManifestType"]  # the OCI format has no HEALTHCHECK
    assert built["Healthcheck"]["Test"] == ["CMD", *healthcheck(final)]
    assert set(config["Volumes"]) == set(exec_form(final.last("VOLUME")))
    assert set(config["ExposedPorts"]) == {f"{p}/tcp" for p in final.all("EXPOSE")}
    env = dict(item.partition("=")[::2] for item in config["Env"])
    assert env["STATE_DIRECTORY"] == env_of(final)["STATE_DIRECTORY"]
    assert env["PATH"].startswith("/opt/vcmon/bin:")

    run = ("run", "--rm", "--pull=never", "--network", "none", "--cap-drop", "ALL")
    version = image.podman(*run, image.tag, "--version")
    assert version.stdout.split() == ["vcmon", VERSION], version.stdout
    check = image.podman(*run, *PING_SYSCTL, image.tag, "check", "-c", "/etc/vcmon/vcmon.yaml")
    assert "config OK" in check.stdout, check.stdout
    assert "ICMP socket: dgram" in check.stdout, check.stdout
    # Without the sysctl (Podman's default range is "0 0") and no capability: no ICMP.
    bare = image.podman(*run, image.tag, "check", "-c", "/etc/vcmon/vcmon.yaml", check=False)
    assert "ICMP socket: unavailable" in bare.stdout, bare.stdout


@dataclass(frozen=True)
class Way:
    """How a container is started and what vcmon gets from it."""

    flags: tuple[str, ...]
    icmp_mode: str
    caps: int  # the capability sets of the process (effective, permitted, bounding)
    own_config: bool  # a config directory over /etc/vcmon (else the image's own)


WAYS = {
    "ping-socket": Way(
        flags=("--cap-drop", "ALL", *PING_SYSCTL), icmp_mode="dgram", caps=0, own_config=True
    ),
    "raw": Way(
        flags=("--cap-drop", "ALL", "--cap-add", "NET_RAW"),
        icmp_mode="raw",
        caps=1 << CAP_NET_RAW,
        own_config=False,
    ),
}
# As compose.yaml and the Kubernetes Deployment: read-only root, /tmp a tmpfs, no new privileges.
COMMON = ("--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp",
          "--security-opt", "no-new-privileges", "--env", f"VCMON_INSTANCE={INSTANCE}")  # fmt: skip


def _test_config() -> str:
    """The container config with only its IPv4 loopback endpoint and short rounds."""
    doc = yaml.safe_load(CONTAINER_CONFIG.read_text(encoding="utf-8"))
    doc["endpoints"] = [ep for ep in doc["endpoints"] if ep["address"] == "127.0.0.1"]
    doc["defaults"] = {"interval": 2.0, "count": 3, "spacing": 0.1, "timeout": 0.5}
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


def _assert_running(podman: Podman, name: str) -> None:
    state = podman.inspect("inspect", name)["State"]
    if not state["Running"]:
        logs = podman("logs", name, check=False)
        raise AssertionError(f"vcmon exited ({state['ExitCode']}): "
                             f"{logs.stdout[-3000:]}{logs.stderr[-3000:]}")  # fmt: skip


def _get(ns: str, port: int, path: str) -> tuple[int, str]:
    """GET http://127.0.0.1:PORT/PATH from inside network namespace ``ns``."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with in_netns(ns):
        try:
            with opener.open(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()


def _proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def _samples(metrics: str, name: str) -> dict[tuple[str, str], float]:
    """(endpoint, state or "") → value of every sample called ``name``."""
    found = {}
    for family in text_string_to_metric_families(metrics):
        for s in family.samples:
            if s.name == name:
                found[(s.labels.get("endpoint", ""), s.labels.get("state", ""))] = s.value
    return found


@pytest.mark.parametrize("how", list(WAYS))
def test_container_runs_vcmon(how: str, image: Image, tmp_path: Path, require_root: None) -> None:
    way = WAYS[how]
    podman = image.podman
    name, volume = f"vcmon-{how}", f"vcmon-state-{how}"
    mounts = ["--volume", f"{volume}:/var/lib/vcmon"]
    if way.own_config:
        conf = tmp_path / "etc-vcmon"
        conf.mkdir()
        (conf / "vcmon.yaml").write_text(_test_config(), encoding="utf-8")
        mounts += ["--volume", f"{conf}:/etc/vcmon:ro"]
        config_path = conf / "vcmon.yaml"
    else:
        config_path = CONTAINER_CONFIG
    config = load_config(config_path, env={"VCMON_INSTANCE": INSTANCE})
    # Network safety: only loopback is probed, and only inside the namespace made below.
    assert all(re.fullmatch(r"127(\.\d+){3}|::1", ep.address) for ep in config.endpoints)
    port = listen_port(config_path.read_text(encoding="utf-8"))

    with isolated_netns(how) as ns:
        podman("run", "--detach", "--pull=never", "--name", name, "--network",
               f"ns:/run/netns/{ns}", *COMMON, *way.flags, *mounts, image.tag)  # fmt: skip
        try:
            pid = int(podman("inspect", "--format", "{{.State.Pid}}", name).stdout)

            def running() -> bool:
                return bool(podman.inspect("inspect", name)["State"]["Running"])

            def passes_healthcheck() -> bool:
                return podman("healthcheck", "run", name, check=False).returncode == 0

            # Each wait ends early, and fails with the log, if vcmon exits.
            wait_for(lambda: not running() or passes_healthcheck(), 60,
                     "the image's HEALTHCHECK to pass", poll=0.2)  # fmt: skip
            _assert_running(podman, name)
            assert podman.inspect("inspect", name)["State"]["Health"]["Status"] == "healthy"

            status = _proc_status(pid)
            assert status["Uid"].split() == ["10001"] * 4, status["Uid"]
            assert status["Gid"].split() == ["10001"] * 4, status["Gid"]
            assert status["NoNewPrivs"] == "1"
            for caps in ("CapEff", "CapPrm", "CapBnd"):
                assert int(status[caps], 16) == way.caps, f"{caps} {status[caps]}"

            code, body = _get(ns, port, "/api/v1/status")
            assert code == 200, body
            assert json.loads(body)["icmp_mode"] == way.icmp_mode
            wait_for(lambda: not running() or _get(ns, port, "/-/ready")[0] == 200, 30,
                     "/-/ready: the first round of every endpoint", poll=0.2)  # fmt: skip
            _assert_running(podman, name)
            code, metrics = _get(ns, port, "/metrics")
            assert code == 200
            endpoints = {ep.id for ep in config.endpoints}
            up = _samples(metrics, "vcmon_up")
            assert up == {(ep, ""): 1.0 for ep in endpoints}, up
            states = _samples(metrics, "vcmon_endpoint_state")
            assert all(states[(ep, "up")] == 1.0 for ep in endpoints), states
            received = _samples(metrics, "vcmon_packets_received_total")
            assert all(received[(ep, "")] > 0 for ep in endpoints), received

            started = time.monotonic()
            podman("stop", "--time", "10", name, timeout=30)
            took = time.monotonic() - started
            code = podman.inspect("inspect", name)["State"]["ExitCode"]
            assert code == 0, f"exit {code} {took:.1f} s after SIGTERM (137: killed)"
            assert took < STOP_WITHIN, f"exit {took:.1f} s after SIGTERM"
            logs = podman("logs", name)
            log = logs.stdout + logs.stderr
        finally:
            podman("rm", "--force", "--time", "0", name, check=False)
    started_line = next((line for line in log.splitlines() if "event=started" in line), log)
    assert f"icmp_mode={way.icmp_mode}" in started_line
    assert "event=stopped" in log
    assert "Traceback" not in log
    db = Path(podman.inspect("volume", "inspect", volume)["Mountpoint"]) / f"{INSTANCE}.db"
    assert db.is_file(), f"no alert state {db.name} in the volume"
    assert db.stat().st_uid == 10001
    podman("volume", "rm", volume)
