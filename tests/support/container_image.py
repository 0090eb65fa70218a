"""deploy/container/Containerfile built and run for real, with rootful Podman, on a machine
that reaches Debian's mirror and PyPI but no container registry and runs no Docker engine.

The base image, ``python:3.11-slim-bookworm``, cannot be pulled here, so a stand-in takes its
name: a minimal Debian bookworm made by debootstrap (variant minbase, with python3 — bookworm's
is 3.11 — python3-venv and ca-certificates, and ``/usr/local/bin/python`` as in the real
image), imported with the real image's PATH, LANG and CMD. Its tarball is cached in
``$VCMON_TEST_CACHE`` (default /var/cache/vcmon-test) under a name made from its recipe, so
only the first run pays for debootstrap; the image itself is built from the Containerfile on
every run, in storage that lives and dies with the run.

Everything Podman keeps lives in one private directory (:meth:`Podman.private`): storage, run
state, volumes, locks, events and network configs, set by its own containers.conf,
storage.conf and registries.conf named in CONTAINERS_* variables; outside it, Podman leaves
only its blob-info cache (/var/lib/containers/cache), an empty /run/containers/networks and
empty ``libpod_parent`` cgroups. No setting under /etc is changed, and nothing is ever pulled
(``--pull=never`` throughout).

What this machine needs, each set in that private containers.conf or on the command line:

* runc, not crun: crun refuses cgroups in "hybrid" mode when a controller sits on the v2
  hierarchy (hugetlb here), even with ``--cgroups=disabled``;
* modest rlimits: Podman's defaults for a rootful container (nofile 1048576, nproc 4194304)
  are above the limits here and raising them needs CAP_SYS_RESOURCE, which this root lacks;
* cgroupfs and an events file: no systemd (so no healthcheck timer either: Podman logs that
  it could not make one, and the test runs the HEALTHCHECK with ``podman healthcheck run``);
* the build's RUN steps see the host's CA bundle (a read-only bind mount that the image does
  not keep): this machine reaches PyPI through a TLS proxy whose CA only the host trusts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vcmon_lab import netns

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "deploy" / "container" / "Containerfile"
IGNOREFILE = CONTAINERFILE.with_name("Containerfile.dockerignore")
CACHE_DIR = Path(os.environ.get("VCMON_TEST_CACHE", "/var/cache/vcmon-test"))
DEBIAN_MIRROR = os.environ.get("VCMON_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

#: Command → the Debian package that brings it (the Makefile's DEBS installs them).
TOOLS = {"podman": "podman", "runc": "runc", "debootstrap": "debootstrap", "ip": "iproute2"}

#: The one base image that has a stand-in, and what the stand-in is made of.
STAND_IN_FOR = "docker.io/library/python:3.11-slim-bookworm"
SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "ca-certificates")
#: The real image's config that matters to a Containerfile built on it.
BASE_CHANGES = (
    "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)
RECIPE_VERSION = 1  # bump to rebuild every cached stand-in

#: Rlimits every container gets (see the module docstring); vcmon needs a handful of files.
ULIMITS = ("nofile=4096:4096", "nproc=4096:4096")

BUILD_TIMEOUT = 300.0
DEBOOTSTRAP_TIMEOUT = 300.0


class PodmanError(AssertionError):
    """A podman command failed (an AssertionError, so the test reports it as a failure)."""


def missing_tools() -> list[str]:
    """The commands this needs that are not installed, with their Debian package."""
    return [f"{cmd} (Debian package {pkg})" for cmd, pkg in TOOLS.items() if not shutil.which(cmd)]


def _toml(value: str | list[str]) -> str:
    return json.dumps(value)  # a JSON string or list of strings is the same in TOML


@dataclass(frozen=True)
class Podman:
    """Rootful Podman whose whole state is under ``root`` (see :meth:`private`)."""

    root: Path

    @classmethod
    def private(cls, root: Path) -> Podman:
        """Write the configs for a Podman of its own under ``root`` (an empty directory)."""
        conf = root / "conf"
        for sub in ("conf", "tmp", "run", "libpod", "networks", "storage"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (conf / "containers.conf").write_text(
            "[containers]\n"
            f"default_ulimits = {_toml(list(ULIMITS))}\n"
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f"events_logfile_path = {_toml(str(root / 'events.log'))}\n"
            'lock_type = "file"\n'
            'runtime = "runc"\n'
            f"tmp_dir = {_toml(str(root / 'libpod'))}\n"
            f"volume_path = {_toml(str(root / 'storage' / 'volumes'))}\n"
            'image_copy_tmp_dir = "storage"\n'
            "[network]\n"
            f"network_config_dir = {_toml(str(root / 'networks'))}\n",
            encoding="utf-8",
        )
        (conf / "storage.conf").write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f"graphroot = {_toml(str(root / 'storage'))}\n"
            f"runroot = {_toml(str(root / 'run'))}\n",
            encoding="utf-8",
        )
        (conf / "registries.conf").write_text(
            'unqualified-search-registries = ["docker.io"]\nshort-name-mode = "permissive"\n',
            encoding="utf-8",
        )
        return cls(root)

    @property
    def env(self) -> dict[str, str]:
        conf = self.root / "conf"
        return {
            **os.environ,
            "CONTAINERS_CONF": str(conf / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(conf / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(conf / "registries.conf"),
            "TMPDIR": str(self.root / "tmp"),
        }

    def __call__(
        self, *args: str, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``podman ARGS``; raises PodmanError with its output if it fails and ``check``."""
        proc = subprocess.run(["podman", *args], capture_output=True, text=True,
                              timeout=timeout, env=self.env, check=False)  # fmt: skip
        if check and proc.returncode != 0:
            raise PodmanError(
                f"podman {' '.join(args)}: exit {proc.returncode}\n{proc.stdout[-3000:]}"
                f"\n{proc.stderr[-3000:]}"
            )
        return proc

    def inspect(self, *args: str) -> dict[str, Any]:
        """The one object ``podman [KIND] inspect ARGS`` describes."""
        (obj,) = json.loads(self(*args).stdout)
        assert isinstance(obj, dict)
        return obj

    def close(self) -> None:
        """Remove every container, then the whole private directory."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self("rm", "--all", "--force", "--time", "0", timeout=60, check=False)
        unmount_under(self.root)
        shutil.rmtree(self.root, ignore_errors=True)


def unmount_under(path: Path) -> None:
    """Unmount whatever is mounted at or under ``path`` (deepest first), so that removing the
    directory never reaches into a mount."""
    prefix = str(path.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4])
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    for point in sorted(set(points), key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)


def base_images(containerfile: Path = CONTAINERFILE) -> set[str]:
    """The images the Containerfile's stages start FROM (not its own earlier stages), with
    the registry and namespace a short name stands for."""
    images: set[str] = set()
    stages: set[str] = set()
    for line in containerfile.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if len(words) >= 2 and words[0].upper() == "FROM":
            image = next(w for w in words[1:] if not w.startswith("--"))
            if len(words) >= 4 and words[-2].upper() == "AS":
                stages.add(words[-1].lower())
            if image.lower() in stages:
                continue
            first = image.split("/")[0]
            if "/" not in image:
                image = f"docker.io/library/{image}"
            elif "." not in first and ":" not in first and first != "localhost":
                image = f"docker.io/{image}"
            images.add(image)
    return images


def stand_in_tarball(cache_dir: Path = CACHE_DIR) -> Path:
    """The stand-in's root filesystem as a tarball in ``cache_dir``, made by debootstrap if
    it is not there yet (one maker at a time; other runs wait for it)."""
    recipe = json.dumps([RECIPE_VERSION, SUITE, "minbase", PACKAGES, DEBIAN_MIRROR])
    key = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    tarball = cache_dir / f"python-3.11-slim-{SUITE}-stand-in-{key}.tar"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.is_file():
            return tarball
        work = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=cache_dir))
        try:
            rootfs = work / "rootfs"
            log = cache_dir / "debootstrap.log"
            with log.open("w", encoding="utf-8") as out:
                made = subprocess.run(
                    ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                     SUITE, str(rootfs), DEBIAN_MIRROR],
                    stdout=out, stderr=subprocess.STDOUT, timeout=DEBOOTSTRAP_TIMEOUT,
                    check=False,
                )  # fmt: skip
            if made.returncode != 0:
                tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
                raise AssertionError(f"debootstrap failed (exit {made.returncode}):\n{tail}")
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for item in (rootfs / junk).glob("*"):
                    if item.is_file():
                        item.unlink()
            (rootfs / "usr/local/bin/python").symlink_to("/usr/bin/python3")
            partial = work / "rootfs.tar"
            subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial),
                            "."], check=True, capture_output=True, timeout=120)  # fmt: skip
            for old in cache_dir.glob("python-*-stand-in-*.tar"):
                old.unlink()  # an earlier recipe's
            os.replace(partial, tarball)
        finally:
            unmount_under(work)  # debootstrap mounts /proc and /sys in the target
            shutil.rmtree(work, ignore_errors=True)
    return tarball


def import_stand_in(podman: Podman, tarball: Path, name: str = STAND_IN_FOR) -> None:
    """Import the stand-in under the base image's name."""
    changes = [arg for change in BASE_CHANGES for arg in ("--change", change)]
    podman("import", *changes, str(tarball), name, timeout=180)


def build(podman: Podman, tag: str, log: Path) -> None:
    """``podman build`` the Containerfile from the repository root, as its header says; the
    output goes to ``log`` and the tail of it into the error if the build fails."""
    argv = ["build", "--pull=never", "--format", "docker", "--network", "host",
            "-f", str(CONTAINERFILE), "--ignorefile", str(IGNOREFILE), "-t", tag]  # fmt: skip
    if HOST_CA_BUNDLE.is_file():
        argv += ["--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.run(["podman", *argv, str(ROOT)], stdout=out, stderr=subprocess.STDOUT,
                              env=podman.env, timeout=BUILD_TIMEOUT, check=False)  # fmt: skip
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise PodmanError(f"podman build failed (exit {proc.returncode}):\n{tail}")


def _ip_json(*args: str) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout
    data = json.loads(out) if out.strip() else []
    assert isinstance(data, list), out
    return data


@contextlib.contextmanager
def isolated_netns(tag: str) -> Iterator[str]:
    """A fresh named network namespace with only ``lo`` (up) and no route out of it, named
    like the lab's test namespaces (``vcmon-t<pid>-…``) so that a crashed run's is swept."""
    name = f"{netns.PREFIX}t{os.getpid()}-ctr-{tag}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", name], capture_output=True, check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        links = {link.get("ifname") for link in _ip_json("-n", name, "link", "show")}
        assert links == {"lo"}, f"{name}: unexpected links {links}"
        routes = [*_ip_json("-n", name, "-4", "route", "show", "table", "all"),
                  *_ip_json("-n", name, "-6", "route", "show", "table", "all")]  # fmt: skip
        assert netns.route_problems(routes) == [], routes
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
