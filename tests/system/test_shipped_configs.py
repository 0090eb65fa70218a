"""The configs shipped in config/: they load, stay on loopback, and the sample is the real shape."""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from vcmon.config import Config, EndpointSpec, IcmpSettings, Level, Timing, load_config
from vcmon.config.alerts import AlertsConfig, DistrictRule, QualityPolicy, QualityRule
from vcmon.config.inventory_import import import_csv
from vcmon.text import slugify

CONFIG = Path(__file__).parents[2] / "config"
BAD = Path(__file__).parents[1] / "unit" / "config" / "bad_configs"
MAIN_CONFIGS = ["vcmon.yaml", "demo.yaml", "province-231.yaml"]
DISTRICTS = [
    "Hạ Long", "Cẩm Phả", "Uông Bí", "Móng Cái", "Đông Triều", "Quảng Yên", "Vân Đồn",
    "Cô Tô", "Tiên Yên", "Bình Liêu", "Đầm Hà", "Hải Hà", "Ba Chẽ",
]  # fmt: skip


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(scope="module")
def province() -> Config:
    return load_config(CONFIG / "province-231.yaml", env={})


@pytest.mark.parametrize("name", MAIN_CONFIGS)
def test_loads_and_stays_on_loopback(name: str) -> None:
    cfg = load_config(CONFIG / name, env={})
    assert cfg.endpoints
    assert [ep.id for ep in cfg.endpoints if not _is_loopback(ep.address)] == []
    host = cfg.listen.rpartition(":")[0].strip("[]")
    assert _is_loopback(host), cfg.listen


def test_example_csv_stays_on_loopback(tmp_path: Path) -> None:
    text, errors = import_csv(CONFIG / "rooms-example.csv")
    assert errors == []
    addresses = [ep["address"] for ep in yaml.safe_load(text)["endpoints"]]
    assert addresses
    assert [a for a in addresses if not _is_loopback(a)] == []


@pytest.mark.parametrize(
    "path",
    sorted(p for d in (CONFIG, BAD) for p in d.rglob("*") if p.is_file()),
    ids=lambda p: str(p.relative_to(p.parents[1])),
)
def test_no_ip_literal_off_loopback(path: Path) -> None:
    # Also catches literals in comments and in configs that are meant to fail.
    text = path.read_bytes().decode("utf-8", "replace")
    found = re.findall(r"(?<![\w.:])[0-9A-Fa-f:.]*[:.][0-9A-Fa-f:.]+(?![\w.:])", text)
    literals = []
    for token in found:
        try:
            literals.append(ipaddress.ip_address(token))
        except ValueError:
            continue
    assert [str(ip) for ip in literals if not ip.is_loopback] == []


def test_demo_is_the_province_on_the_default_port(province: Config) -> None:
    demo = load_config(CONFIG / "demo.yaml", env={})
    assert demo.listen == "127.0.0.1:9231"
    assert demo.endpoints == province.endpoints


# ---------------------------------------------------------------------------------------------
# The 231-room sample


def test_province_counts(province: Config) -> None:
    eps = province.endpoints
    assert len(eps) == 231
    assert Counter(ep.level for ep in eps) == {
        Level.PROVINCE: 1,
        Level.DEPARTMENT: 40,
        Level.DISTRICT: 13,
        Level.COMMUNE: 177,
    }
    assert [ep.district for ep in eps if ep.level is Level.DISTRICT] == DISTRICTS
    assert {ep.district for ep in eps} == {"Tỉnh", *DISTRICTS}


def test_province_tree(province: Config) -> None:
    by_id = {ep.id: ep for ep in province.endpoints}
    (centre,) = [ep for ep in province.endpoints if ep.level is Level.PROVINCE]
    unit_of = {ep.district: ep.id for ep in province.endpoints if ep.level is Level.DISTRICT}
    for ep in province.endpoints:
        assert all(p in by_id for p in ep.parent), ep.id
        expected = {
            Level.PROVINCE: (),
            Level.DEPARTMENT: (centre.id,),
            Level.DISTRICT: (centre.id,),
            Level.COMMUNE: (unit_of.get(ep.district, "?"),),
        }[ep.level]
        assert ep.parent == expected, ep.id


@pytest.mark.parametrize(
    ("district", "communes"),
    [("Hạ Long", 33), ("Cô Tô", 3), ("Bình Liêu", 7), ("Ba Chẽ", 8), ("Đông Triều", 21)],
)
def test_province_communes_per_district(province: Config, district: str, communes: int) -> None:
    got = [ep for ep in province.endpoints if ep.level is Level.COMMUNE and ep.district == district]
    assert len(got) == communes


def test_province_address_plan(province: Config) -> None:
    # Documented in the file header: another engineer maps 127.10.0.0/16 into a lab range.
    district_no = {name: i for i, name in enumerate(DISTRICTS, 1)}
    for ep in province.endpoints:
        ip = ipaddress.IPv4Address(ep.address)
        assert ip in ipaddress.IPv4Network("127.10.0.0/16"), ep.id
        third, fourth = ep.address.split(".")[2:]
        if ep.level is Level.PROVINCE:
            assert ep.address == "127.10.0.1"
        elif ep.level is Level.DEPARTMENT:
            assert third == "0", ep.id
            assert 11 <= int(fourth) <= 50, ep.id
        elif ep.level is Level.DISTRICT:
            assert (int(third), fourth) == (district_no[ep.district], "1"), ep.id
        else:
            assert int(third) == district_no[ep.district], ep.id
            assert int(fourth) >= 11, ep.id
    assert len({ep.address for ep in province.endpoints}) == 231


def test_province_ids_are_ascii_slugs(province: Config) -> None:
    for ep in province.endpoints:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", ep.id), ep.id
        if ep.level is Level.COMMUNE:
            assert ep.id.startswith(slugify(ep.district) + "-"), ep.id


def test_province_links(province: Config) -> None:
    links = Counter(ep.labels["link"] for ep in province.endpoints)
    assert set(links) == {"fibre", "microwave", "satellite"}
    assert province.endpoint("co-to-thanh-lan").labels["link"] == "satellite"
    assert province.endpoint("binh-lieu-hoanh-mo").labels["link"] == "microwave"
    for ep in province.endpoints:
        if ep.labels["link"] == "satellite":
            assert ep.timing.timeout > province.defaults.timeout, ep.id


# ---------------------------------------------------------------------------------------------
# The reference documents every option


def test_reference_sets_every_option() -> None:
    # If an option is added to the models, vcmon.yaml must show and explain it.
    raw = yaml.safe_load((CONFIG / "vcmon.yaml").read_text(encoding="utf-8"))
    top = set(Config.model_fields) - {"source"} | {"inventory"}
    assert set(raw) == top
    assert set(raw["defaults"]) == set(Timing.model_fields)
    assert set(raw["icmp"]) == set(IcmpSettings.model_fields)
    assert set(raw["endpoints"][0]) == set(EndpointSpec.model_fields)
    assert set(raw["alerts"]) == set(AlertsConfig.model_fields)
    assert set(raw["alerts"]["quality"]) == set(QualityPolicy.model_fields)
    for rule in raw["alerts"]["quality"].values():
        assert set(rule) == set(QualityRule.model_fields)
    assert set(raw["alerts"]["districts"]) == set(DistrictRule.model_fields)


def test_reference_states_the_defaults() -> None:
    raw = yaml.safe_load((CONFIG / "vcmon.yaml").read_text(encoding="utf-8"))
    assert Timing(**raw["defaults"]) == Timing()
    assert IcmpSettings(**raw["icmp"]) == IcmpSettings()
    assert (raw["listen"], raw["resolve_interval"]) == ("127.0.0.1:9231", 300.0)
    alerts = AlertsConfig(**raw["alerts"])
    default = AlertsConfig()
    for name in ("locale", "timezone", "state_file", "health", "quality", "districts"):
        assert getattr(alerts, name) == getattr(default, name), name
