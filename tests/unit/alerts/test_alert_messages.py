"""Table tests of alert messages: places, durations, figures, every kind in both languages,
descriptions, admin templates and the errors they raise."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from vcmon.alerts.messages import (
    Messages,
    TemplateError,
    duration_words,
    format_number,
    place,
    placeholders,
)
from vcmon.alerts.model import Kind, Measurements, Severity, Status, Target
from vcmon.config.alerts import AlertsConfig, Template

START = 1_800_000_000.0  # Friday 2027-01-15, 15:00 in Asia/Ho_Chi_Minh
F, R = Status.FIRING, Status.RESOLVED
CRIT, WARN = Severity.CRITICAL, Severity.WARNING


def target(id: str, name: str, district: str, level: str, **labels: str) -> Target:
    return Target(id, name, f"127.10.0.{len(id)}", district, level, labels)


DONG_TIEN = target("co-to-dong-tien", "UBND xã Đồng Tiến", "Cô Tô", "commune", unit_type="xã")
CO_TO = target("co-to", "UBND huyện Cô Tô", "Cô Tô", "district", unit_type="huyện")
CO_TO_DISTRICT = Target("district:co-to", "Cô Tô", "", "Cô Tô", "district")
SINK = Target("sink:webhook-so-tt", "webhook-so-tt", "", "", "sink")
HONG_GAI = target(
    "ha-long-hong-gai", "UBND phường Hồng Gai", "Hạ Long", "commune", unit_type="phường"
)
HA_LONG = target("ha-long", "UBND thành phố Hạ Long", "Hạ Long", "district", unit_type="thành phố")
SO_TAI_CHINH = target("so-tai-chinh", "Sở Tài chính", "Tỉnh", "department", unit_type="sở/ngành")
TINH = target(
    "tinh-ubnd",
    "UBND tỉnh Quảng Ninh (phòng họp trực tuyến trung tâm)",
    "Tỉnh",
    "province",
    unit_type="tỉnh",
)

PLACES = [
    (DONG_TIEN, "Xã Đồng Tiến, huyện Cô Tô", "Đồng Tiến commune, Cô Tô district"),
    (CO_TO, "Huyện Cô Tô", "Cô Tô district"),
    (CO_TO_DISTRICT, "Huyện Cô Tô", "Cô Tô district"),
    (HA_LONG, "Thành phố Hạ Long", "Hạ Long city"),
    # a phường is never in a huyện: without the district's kind, name none
    (HONG_GAI, "Phường Hồng Gai, Hạ Long", "Hồng Gai ward, Hạ Long"),
    (
        target(
            "ha-long-hong-gai",
            "UBND phường Hồng Gai",
            "Hạ Long",
            "commune",
            unit_type="phường",
            district_type="thành phố",
        ),
        "Phường Hồng Gai, thành phố Hạ Long",
        "Hồng Gai ward, Hạ Long city",
    ),
    (
        target("quang-yen", "UBND thị xã Quảng Yên", "Quảng Yên", "district"),
        "Thị xã Quảng Yên",
        "Quảng Yên town",
    ),
    (
        target("co-to-tt", "UBND thị trấn Cô Tô", "Cô Tô", "commune", unit_type="thị trấn"),
        "Thị trấn Cô Tô, huyện Cô Tô",
        "Cô Tô township, Cô Tô district",
    ),
    # no unit_type label: the name's own unit word, else xã
    (
        target("c", "UBND phường Bãi Cháy", "Hạ Long", "commune"),
        "Phường Bãi Cháy, Hạ Long",
        "Bãi Cháy ward, Hạ Long",
    ),
    (
        target("c", "Phòng họp trực tuyến UBND xã Thanh Lân", "Cô Tô", "commune"),
        "Xã Thanh Lân, huyện Cô Tô",
        "Thanh Lân commune, Cô Tô district",
    ),
    (
        target("c", "Đồng Tiến", "Cô Tô", "commune"),
        "Xã Đồng Tiến, huyện Cô Tô",
        "Đồng Tiến commune, Cô Tô district",
    ),
    (
        target("c", "Ủy ban nhân dân xã Đồng Tiến", "Cô Tô", "commune"),
        "Xã Đồng Tiến, huyện Cô Tô",
        "Đồng Tiến commune, Cô Tô district",
    ),
    # a district unit without labels: its kind from the name, else huyện
    (target("h", "UBND huyện Ba Chẽ", "Ba Chẽ", "district"), "Huyện Ba Chẽ", "Ba Chẽ district"),
    (target("h", "Phòng họp Ba Chẽ", "Ba Chẽ", "district"), "Huyện Ba Chẽ", "Ba Chẽ district"),
    # departments and the province: their own name
    (SO_TAI_CHINH, "Sở Tài chính", "Sở Tài chính"),
    (TINH, TINH.name, TINH.name),
    (target("x", "", "Tỉnh", "department"), "x", "x"),
]


@pytest.mark.parametrize(("tgt", "vi", "en"), PLACES)
def test_place(tgt: Target, vi: str, en: str) -> None:
    assert place(tgt, "vi") == vi
    assert place(tgt, "en") == en


def test_place_of_a_decomposed_name_is_composed() -> None:
    nfd = Target("c", unicodedata.normalize("NFD", "UBND xã Đồng Tiến"), "", "Cô Tô", "commune")
    assert place(nfd, "vi") == unicodedata.normalize("NFC", "Xã Đồng Tiến, huyện Cô Tô")


DURATIONS = [
    (0, "0 giây", "0 s"),
    (45, "45 giây", "45 s"),
    (59.9, "59 giây", "59 s"),
    (60, "1 phút", "1 min"),
    (180, "3 phút", "3 min"),
    (239, "3 phút", "3 min"),
    (3599, "59 phút", "59 min"),
    (3600, "1 giờ", "1 h"),
    (3900, "1 giờ 5 phút", "1 h 5 min"),
    (86399, "23 giờ 59 phút", "23 h 59 min"),
    (86400, "1 ngày", "1 d"),
    (93900, "1 ngày 2 giờ", "1 d 2 h"),
    (-5, "0 giây", "0 s"),  # clocks that disagree never make a negative duration
    (float("nan"), "—", "—"),
]


@pytest.mark.parametrize(("seconds", "vi", "en"), DURATIONS)
def test_duration_words(seconds: float, vi: str, en: str) -> None:
    assert duration_words(seconds, "vi") == vi
    assert duration_words(seconds, "en") == en


NUMBERS = [
    (12.5, 1, "12,5", "12.5"),
    (5.0, 1, "5", "5"),
    (5, 1, "5", "5"),
    (12.34, 1, "12,3", "12.3"),
    (0.04, 1, "0", "0"),
    (-0.01, 1, "0", "0"),
    (152.37, 1, "152,4", "152.4"),
    (3.456, 2, "3,46", "3.46"),
    (1234.5, 1, "1234,5", "1234.5"),
    (None, 1, "—", "—"),
    (True, 1, "—", "—"),
    ("12", 1, "—", "—"),
    (float("inf"), 1, "—", "—"),
    (float("nan"), 1, "—", "—"),
]


@pytest.mark.parametrize(("value", "decimals", "vi", "en"), NUMBERS)
def test_number(value: object, decimals: int, vi: str, en: str) -> None:
    assert format_number(value, "vi", decimals) == vi
    assert format_number(value, "en", decimals) == en


@dataclass(frozen=True)
class Event:
    """What the engine passes to ``render``, with times relative to ``START``."""

    kind: Kind | str
    status: Status
    severity: Severity
    target: Target
    after: float
    affected: tuple[str, ...]
    measurements: Measurements
    detail: Mapping[str, Any]

    def render(self, messages: Messages) -> tuple[str, str]:
        return messages.render(
            kind=self.kind,  # type: ignore[arg-type]  # unknown kinds are rendered too
            status=self.status,
            severity=self.severity,
            target=self.target,
            affected=self.affected,
            measurements=self.measurements,
            started_at=START,
            at=START + self.after,
            detail=self.detail,
        )


def ev(
    kind: Kind | str,
    status: Status = F,
    severity: Severity = CRIT,
    tgt: Target = DONG_TIEN,
    *,
    after: float = 180.0,
    affected: Sequence[str] = (),
    measurements: Measurements | None = None,
    **detail: Any,
) -> Event:
    m = measurements or Measurements()
    return Event(kind, status, severity, tgt, after, tuple(affected), m, detail)


def render(messages: Messages, kind: Kind | str, *args: Any, **kwargs: Any) -> tuple[str, str]:
    return ev(kind, *args, **kwargs).render(messages)


def case(name: str, event: Event, vi: str, en: str) -> Any:
    return pytest.param(event, vi, en, id=name)


VI, EN = Messages("vi"), Messages("en")
C3 = ("co-to-dong-tien", "co-to-thanh-lan", "co-to-tt")
GROUP: dict[str, Any] = {"total": 3, "child_level": "commune"}
LOSS: dict[str, Any] = {"value": 12.5, "threshold": 5.0, "metric": "loss_pct"}
DONG_TIEN_VI, DONG_TIEN_EN = "Xã Đồng Tiến, huyện Cô Tô", "Đồng Tiến commune, Cô Tô district"

SUMMARIES = [
    case(
        "endpoint down",
        ev(Kind.ENDPOINT_DOWN),
        "Xã Đồng Tiến, huyện Cô Tô: mất kết nối 3 phút",
        "Đồng Tiến commune, Cô Tô district: down for 3 min",
    ),
    case(
        "endpoint down, 45 s",
        ev(Kind.ENDPOINT_DOWN, after=45),
        f"{DONG_TIEN_VI}: mất kết nối 45 giây",
        f"{DONG_TIEN_EN}: down for 45 s",
    ),
    case(
        "endpoint down, counted from failing_since",
        ev(Kind.ENDPOINT_DOWN, failing_since=START - 120),
        f"{DONG_TIEN_VI}: mất kết nối 5 phút",
        f"{DONG_TIEN_EN}: down for 5 min",
    ),
    case(
        "endpoint back",
        ev(Kind.ENDPOINT_DOWN, R, after=3900),
        f"{DONG_TIEN_VI}: đã kết nối lại sau 1 giờ 5 phút",
        f"{DONG_TIEN_EN}: back up after 1 h 5 min",
    ),
    case(
        "group down",
        ev(Kind.GROUP_DOWN, tgt=CO_TO, affected=C3, **GROUP),
        "Huyện Cô Tô: mất kết nối — 3/3 xã không liên lạc được",
        "Cô Tô district uplink down — 3 of 3 communes unreachable",
    ),
    case(
        "group down, one child",
        ev(Kind.GROUP_DOWN, tgt=CO_TO, affected=C3[:1], total=1, child_level="commune"),
        "Huyện Cô Tô: mất kết nối — 1/1 xã không liên lạc được",
        "Cô Tô district uplink down — 1 of 1 commune unreachable",
    ),
    case(
        "group down, mixed children",
        ev(Kind.GROUP_DOWN, tgt=TINH, affected=C3[:2], total=53, child_level="mixed"),
        f"{TINH.name}: mất kết nối — 2/53 đơn vị không liên lạc được",
        f"{TINH.name} uplink down — 2 of 53 units unreachable",
    ),
    case(
        "group back",
        ev(Kind.GROUP_DOWN, R, tgt=CO_TO, affected=C3, after=720, **GROUP),
        "Huyện Cô Tô: đã kết nối lại sau 12 phút",
        "Cô Tô district uplink back up after 12 min",
    ),
    case(
        "district down",
        ev(Kind.DISTRICT_DOWN, tgt=CO_TO_DISTRICT, affected=(*C3, "x"), total=6),
        "Huyện Cô Tô: 4/6 điểm mất kết nối cùng lúc",
        "Cô Tô district: 4 of 6 endpoints down at once",
    ),
    case(
        "district back",
        ev(Kind.DISTRICT_DOWN, R, tgt=CO_TO_DISTRICT, after=600, total=6),
        "Huyện Cô Tô: hết mất kết nối đồng loạt sau 10 phút",
        "Cô Tô district: widespread outage over after 10 min",
    ),
    case(
        "flapping",
        ev(Kind.FLAPPING, F, WARN, flap_pct=40),
        f"{DONG_TIEN_VI}: chập chờn (40% đổi trạng thái)",
        f"{DONG_TIEN_EN}: flapping (40% state changes)",
    ),
    case(
        "flapping settled up",
        ev(Kind.FLAPPING, R, WARN, flap_pct=40, settled="up"),
        f"{DONG_TIEN_VI}: hết chập chờn, hiện hoạt động bình thường",
        f"{DONG_TIEN_EN}: stopped flapping, now up",
    ),
    case(
        "flapping settled down",
        ev(Kind.FLAPPING, R, WARN, settled="down"),
        f"{DONG_TIEN_VI}: hết chập chờn, hiện mất kết nối",
        f"{DONG_TIEN_EN}: stopped flapping, now down",
    ),
    case(
        "flapping, settled unknown",
        ev(Kind.FLAPPING, R, WARN),
        f"{DONG_TIEN_VI}: hết chập chờn, hiện —",
        f"{DONG_TIEN_EN}: stopped flapping, —",
    ),
    case(
        "loss warning",
        ev(Kind.LOSS_HIGH, F, WARN, **LOSS),
        "Xã Đồng Tiến, huyện Cô Tô: mất gói 12,5% (ngưỡng cảnh báo 5%)",
        "Đồng Tiến commune, Cô Tô district: loss 12.5% (warning threshold 5%)",
    ),
    case(
        "loss critical, unit from the kind",
        ev(Kind.LOSS_HIGH, value=23.3, threshold=15),
        f"{DONG_TIEN_VI}: mất gói 23,3% (ngưỡng nghiêm trọng 15%)",
        f"{DONG_TIEN_EN}: loss 23.3% (critical threshold 15%)",
    ),
    case(
        "loss back",
        ev(Kind.LOSS_HIGH, R, WARN, after=900, **LOSS),
        f"{DONG_TIEN_VI}: mất gói đã trở lại bình thường sau 15 phút",
        f"{DONG_TIEN_EN}: loss back to normal after 15 min",
    ),
    case(
        "latency",
        ev(Kind.LATENCY_HIGH, tgt=HONG_GAI, value=312.44, threshold=300.0),
        "Phường Hồng Gai, Hạ Long: độ trễ 312,4 ms (ngưỡng nghiêm trọng 300 ms)",
        "Hồng Gai ward, Hạ Long: latency 312.4 ms (critical threshold 300 ms)",
    ),
    case(
        "latency back",
        ev(Kind.LATENCY_HIGH, R, tgt=HONG_GAI, value=312.44, threshold=300.0),
        "Phường Hồng Gai, Hạ Long: độ trễ đã trở lại bình thường sau 3 phút",
        "Hồng Gai ward, Hạ Long: latency back to normal after 3 min",
    ),
    case(
        "jitter",
        ev(Kind.JITTER_HIGH, F, WARN, SO_TAI_CHINH, value=31.25, threshold=30),
        "Sở Tài chính: jitter 31,2 ms (ngưỡng cảnh báo 30 ms)",
        "Sở Tài chính: jitter 31.2 ms (warning threshold 30 ms)",
    ),
    case(
        "jitter back",
        ev(Kind.JITTER_HIGH, R, WARN, SO_TAI_CHINH, after=7200),
        "Sở Tài chính: jitter đã trở lại bình thường sau 2 giờ",
        "Sở Tài chính: jitter back to normal after 2 h",
    ),
    case(
        "mos",
        ev(Kind.MOS_LOW, value=3.05, threshold=3.1),
        f"{DONG_TIEN_VI}: chất lượng thoại thấp, MOS 3,05 (ngưỡng nghiêm trọng 3,1)",
        f"{DONG_TIEN_EN}: call quality low, MOS 3.05 (critical threshold 3.1)",
    ),
    case(
        "mos back",
        ev(Kind.MOS_LOW, R, value=3.05, threshold=3.1),
        f"{DONG_TIEN_VI}: chất lượng thoại đã trở lại bình thường sau 3 phút",
        f"{DONG_TIEN_EN}: call quality back to normal after 3 min",
    ),
    case(
        "quality without figures",
        ev(Kind.LATENCY_HIGH, F, WARN),
        f"{DONG_TIEN_VI}: độ trễ — (ngưỡng cảnh báo —)",
        f"{DONG_TIEN_EN}: latency — (warning threshold —)",
    ),
    case(
        "sink failing",
        ev(Kind.SINK_FAILING, tgt=SINK, failing_since=START - 420),
        "Kênh gửi cảnh báo webhook-so-tt: không gửi được 10 phút",
        "Alert sink webhook-so-tt: failing to deliver for 10 min",
    ),
    case(
        "sink delivering again",
        ev(Kind.SINK_FAILING, R, tgt=SINK, after=45),
        "Kênh gửi cảnh báo webhook-so-tt: đã gửi lại được sau 45 giây",
        "Alert sink webhook-so-tt: delivering again after 45 s",
    ),
    case(
        "unknown kind",
        ev("packet_reorder", F, WARN),
        f"{DONG_TIEN_VI}: packet_reorder (cảnh báo)",
        f"{DONG_TIEN_EN}: packet_reorder (warning)",
    ),
    case(
        "unknown kind resolved",
        ev("packet_reorder", R, WARN),
        f"{DONG_TIEN_VI}: hết packet_reorder sau 3 phút",
        f"{DONG_TIEN_EN}: packet_reorder cleared after 3 min",
    ),
]


@pytest.mark.parametrize(("event", "vi", "en"), SUMMARIES)
def test_summary(event: Event, vi: str, en: str) -> None:
    for messages, expected in ((VI, vi), (EN, en)):
        summary, description = event.render(messages)
        assert summary == expected
        assert description.splitlines()[0] == expected


@pytest.mark.parametrize("locale", ["vi", "en"])
@pytest.mark.parametrize("status", list(Status))
@pytest.mark.parametrize("severity", list(Severity))
@pytest.mark.parametrize("kind", list(Kind))
def test_every_kind_renders_without_leftover_braces(
    kind: Kind, severity: Severity, status: Status, locale: str
) -> None:
    summary, description = render(Messages(locale), kind, status, severity, CO_TO)
    assert summary
    assert "{" not in summary
    assert "}" not in summary
    assert description.startswith(summary + "\n")


def test_description_of_a_firing() -> None:
    m = Measurements(rtt_ms=None, jitter_ms=None, loss_pct=100.0, mos=None)
    _, vi = render(VI, Kind.ENDPOINT_DOWN, measurements=m)
    assert vi == (
        "Xã Đồng Tiến, huyện Cô Tô: mất kết nối 3 phút\n"
        f"Điểm cầu: UBND xã Đồng Tiến (co-to-dong-tien, {DONG_TIEN.address})\n"
        "Loại: endpoint_down · mức: nghiêm trọng\n"
        "Bắt đầu: 15:00 15/01/2027\n"
        "Đo được: mất gói 100%"
    )
    _, en = render(EN, Kind.ENDPOINT_DOWN, measurements=m)
    assert en == (
        "Đồng Tiến commune, Cô Tô district: down for 3 min\n"
        f"Endpoint: UBND xã Đồng Tiến (co-to-dong-tien, {DONG_TIEN.address})\n"
        "Kind: endpoint_down · severity: critical\n"
        "Since: 2027-01-15 15:00+07:00\n"
        "Measured: loss 100%"
    )


def test_description_of_a_resolve_says_when_it_ended() -> None:
    _, vi = render(VI, Kind.ENDPOINT_DOWN, R, after=3900, failing_since=START - 60)
    assert "Bắt đầu: 14:59 15/01/2027\nKết thúc: 16:05 15/01/2027 (kéo dài 1 giờ 6 phút)" in vi
    _, en = render(EN, Kind.ENDPOINT_DOWN, R, after=3900)
    assert "Ended: 2027-01-15 16:05+07:00 (lasted 1 h 5 min)" in en


def test_description_lists_the_figures_present_with_decimal_comma() -> None:
    m = Measurements(rtt_ms=45.234, jitter_ms=3.0, loss_pct=12.5, mos=4.312)
    _, vi = render(VI, Kind.LOSS_HIGH, measurements=m, **LOSS)
    assert "Đo được: độ trễ 45,2 ms, jitter 3 ms, mất gói 12,5%, MOS 4,31" in vi.splitlines()
    _, en = render(EN, Kind.LOSS_HIGH, measurements=m, **LOSS)
    assert "Measured: RTT 45.2 ms, jitter 3 ms, loss 12.5%, MOS 4.31" in en.splitlines()
    _, none = render(EN, Kind.LOSS_HIGH, measurements=Measurements(), **LOSS)
    assert "Measured" not in none


AFFECTED = [
    (0, None, None),
    (3, "Ảnh hưởng (3): e0, e1, e2", "Affected (3): e0, e1, e2"),
    (
        20,
        "Ảnh hưởng (20): " + ", ".join(f"e{i}" for i in range(20)),
        "Affected (20): " + ", ".join(f"e{i}" for i in range(20)),
    ),
    (
        25,
        "Ảnh hưởng (25): " + ", ".join(f"e{i}" for i in range(20)) + " … và 5 điểm khác",
        "Affected (25): " + ", ".join(f"e{i}" for i in range(20)) + " … and 5 more",
    ),
]


@pytest.mark.parametrize(("count", "vi", "en"), AFFECTED)
def test_description_lists_at_most_20_affected(count: int, vi: str | None, en: str | None) -> None:
    affected = [f"e{i}" for i in range(count)]
    _, vi_text = render(VI, Kind.GROUP_DOWN, tgt=CO_TO, affected=affected, total=count)
    _, en_text = render(EN, Kind.GROUP_DOWN, tgt=CO_TO, affected=affected, total=count)
    last_vi, last_en = vi_text.splitlines()[-1], en_text.splitlines()[-1]
    if vi is None or en is None:  # nothing affected: no such line
        assert not last_vi.startswith("Ảnh hưởng")
        assert not last_en.startswith("Affected")
    else:
        assert (last_vi, last_en) == (vi, en)


@pytest.mark.parametrize(
    ("tgt", "kind"), [(CO_TO_DISTRICT, Kind.DISTRICT_DOWN), (SINK, Kind.SINK_FAILING)]
)
def test_description_of_a_pseudo_target_names_no_endpoint(tgt: Target, kind: Kind) -> None:
    _, text = render(VI, kind, tgt=tgt, affected=C3, total=6)
    assert "Điểm cầu" not in text
    assert text.splitlines()[1] == f"Loại: {kind} · mức: nghiêm trọng"


@pytest.mark.parametrize(
    ("locale", "comment", "expected"),
    [
        ("vi", "đang xử lý viba", "Đã xác nhận bởi trực ban — đang xử lý viba: S"),
        ("vi", "", "Đã xác nhận bởi trực ban: S"),
        ("en", "on it", "Acknowledged by trực ban — on it: S"),
        ("en", "", "Acknowledged by trực ban: S"),
    ],
)
def test_acknowledged(locale: str, comment: str, expected: str) -> None:
    assert Messages(locale).acknowledged("S", "trực ban", comment) == expected


@pytest.mark.parametrize(
    ("timezone", "vi", "en"),
    [
        ("Asia/Ho_Chi_Minh", "15:00 15/01/2027", "2027-01-15 15:00+07:00"),
        ("UTC", "08:00 15/01/2027", "2027-01-15 08:00+00:00"),
        ("Europe/Berlin", "09:00 15/01/2027", "2027-01-15 09:00+01:00"),
    ],
)
def test_started_local_in_the_configured_zone(timezone: str, vi: str, en: str) -> None:
    own = {"endpoint_down": Template(summary="{started_local}")}
    assert render(Messages("vi", {"vi": own}, timezone), Kind.ENDPOINT_DOWN)[0] == vi
    assert render(Messages("en", {"en": own}, timezone), Kind.ENDPOINT_DOWN)[0] == en


# -- admin templates ----------------------------------------------------------------------

OWN = {
    "vi": {
        "endpoint_down": Template(summary="[MẤT KẾT NỐI] {place} ({duration})"),
        "loss_high": Template(resolved="{place}: hết mất gói"),
        "mos_low": Template(description="MOS {mos} tại {name}"),
    },
    "en": {"endpoint_down": Template(summary="{place}: no answer for {duration}")},
}


@pytest.mark.parametrize(
    ("locale", "kind", "status", "summary"),
    [
        ("vi", Kind.ENDPOINT_DOWN, F, "[MẤT KẾT NỐI] Xã Đồng Tiến, huyện Cô Tô (3 phút)"),
        ("vi", Kind.ENDPOINT_DOWN, R, "Xã Đồng Tiến, huyện Cô Tô: đã kết nối lại sau 3 phút"),
        ("vi", Kind.LOSS_HIGH, F, "Xã Đồng Tiến, huyện Cô Tô: mất gói 12,5% (ngưỡng cảnh báo 5%)"),
        ("vi", Kind.LOSS_HIGH, R, "Xã Đồng Tiến, huyện Cô Tô: hết mất gói"),
        ("en", Kind.ENDPOINT_DOWN, F, "Đồng Tiến commune, Cô Tô district: no answer for 3 min"),
        (
            "en",
            Kind.LOSS_HIGH,
            R,
            "Đồng Tiến commune, Cô Tô district: loss back to normal after 3 min",
        ),
    ],
)
def test_override_replaces_only_the_fields_it_sets(
    locale: str, kind: Kind, status: Status, summary: str
) -> None:
    assert render(Messages(locale, OWN), kind, status, WARN, **LOSS)[0] == summary


def test_override_of_the_description() -> None:
    m = Measurements(mos=3.456)
    summary, description = render(Messages("vi", OWN), Kind.MOS_LOW, measurements=m)
    assert summary.startswith("Xã Đồng Tiến, huyện Cô Tô: chất lượng thoại thấp")
    assert description == "MOS 3,46 tại UBND xã Đồng Tiến"
    assert render(Messages("vi", OWN), Kind.MOS_LOW, R)[1] == "MOS — tại UBND xã Đồng Tiến"


def test_every_placeholder_renders() -> None:
    text = " | ".join(f"{name}={{{name}}}" for name in placeholders())
    own = {"vi": {"group_down": Template(summary=text)}}
    m = Measurements(rtt_ms=45.25, jitter_ms=None, loss_pct=0.0, mos=4.4)
    summary, _ = render(
        Messages("vi", own), Kind.GROUP_DOWN, tgt=CO_TO, affected=C3, after=300, **GROUP
    )
    values = dict(part.split("=", 1) for part in summary.split(" | "))
    assert values == {
        "place": "Huyện Cô Tô",
        "name": "UBND huyện Cô Tô",
        "id": "co-to",
        "district": "Cô Tô",
        "level": "district",
        "address": CO_TO.address,
        "kind": "group_down",
        "severity": "nghiêm trọng",
        "duration": "5 phút",
        "started_local": "15:00 15/01/2027",
        "affected_count": "3",
        "total": "3",
        "children": "xã",
        "value": "—",
        "threshold": "—",
        "flap_pct": "—",
        "settled": "—",
        "rtt_ms": "—",
        "jitter_ms": "—",
        "loss_pct": "—",
        "mos": "—",
    }
    summary, _ = render(Messages("vi", own), Kind.GROUP_DOWN, measurements=m)
    values = dict(part.split("=", 1) for part in summary.split(" | "))
    assert (values["rtt_ms"], values["jitter_ms"], values["loss_pct"], values["mos"]) == (
        "45,2",
        "—",
        "0",
        "4,4",
    )


def test_format_specs_and_literal_braces_work() -> None:
    own = {"en": {"endpoint_down": Template(summary="{{{kind}}} {place:.9} {duration:>8}")}}
    summary, _ = render(Messages("en", own), Kind.ENDPOINT_DOWN)
    assert summary == "{endpoint_down} Đồng Tiến    3 min"


def test_templates_from_the_config_section() -> None:
    config = AlertsConfig.model_validate(
        {"locale": "en", "templates": {"en": {"flapping": {"summary": "{place} flaps"}}}}
    )
    messages = Messages(config.locale, config.templates, config.timezone)
    assert render(messages, Kind.FLAPPING)[0] == "Đồng Tiến commune, Cô Tô district flaps"


def test_placeholders_are_documented_one_line_each() -> None:
    names = placeholders()
    assert {
        "place",
        "name",
        "district",
        "level",
        "duration",
        "value",
        "threshold",
        "affected_count",
        "total",
        "severity",
        "kind",
        "rtt_ms",
        "jitter_ms",
        "loss_pct",
        "mos",
        "started_local",
        "settled",
        "children",
        "flap_pct",
    } <= set(names)
    for meaning in names.values():
        assert meaning
        assert "\n" not in meaning
    names["place"] = "changed"
    assert placeholders()["place"] != "changed"


KNOWN = (
    "address, affected_count, children, district, duration, flap_pct, id, jitter_ms, kind, "
    "level, loss_pct, mos, name, place, rtt_ms, settled, severity, started_local, threshold, "
    "total, value"
)

BAD: list[tuple[str, Mapping[str, Mapping[str, Template]], str]] = [
    (
        "unknown placeholder",
        {"vi": {"endpoint_down": Template(summary="{place} hỏng {lau}")}},
        f"alerts.templates.vi.endpoint_down.summary: unknown placeholder {{lau}} "
        f"(expected one of: {KNOWN})",
    ),
    (
        "in the locale not in use",
        {"en": {"loss_high": Template(resolved="{place}: {loss}")}},
        f"alerts.templates.en.loss_high.resolved: unknown placeholder {{loss}} "
        f"(expected one of: {KNOWN})",
    ),
    (
        "in a description",
        {"vi": {"mos_low": Template(description="{mos} {Place}")}},
        f"alerts.templates.vi.mos_low.description: unknown placeholder {{Place}} "
        f"(expected one of: {KNOWN})",
    ),
    (
        "attribute",
        {"vi": {"flapping": Template(summary="{place.upper}")}},
        f"alerts.templates.vi.flapping.summary: unknown placeholder {{place.upper}} "
        f"(expected one of: {KNOWN})",
    ),
    (
        "index",
        {"vi": {"flapping": Template(summary="{place[0]}")}},
        f"alerts.templates.vi.flapping.summary: unknown placeholder {{place[0]}} "
        f"(expected one of: {KNOWN})",
    ),
    (
        "positional",
        {"vi": {"flapping": Template(summary="{0}")}},
        f"alerts.templates.vi.flapping.summary: unknown placeholder {{0}} "
        f"(expected one of: {KNOWN})",
    ),
    (
        "nested in a format spec",
        {"vi": {"flapping": Template(summary="{place:{width}}")}},
        f"alerts.templates.vi.flapping.summary: unknown placeholder {{width}} "
        f"(expected one of: {KNOWN})",
    ),
    (
        "empty",
        {"vi": {"group_down": Template(summary="{place}: {}")}},
        "alerts.templates.vi.group_down.summary: empty placeholder {} in '{place}: {}' "
        "(name it, e.g. {place}; write {{ and }} for literal braces)",
    ),
    (
        "unclosed",
        {"vi": {"group_down": Template(summary="{place: mất")}},
        "alerts.templates.vi.group_down.summary: bad template '{place: mất': "
        "unmatched '{' in format spec",
    ),
    (
        "lone closing brace",
        {"en": {"jitter_high": Template(summary="{place} }")}},
        "alerts.templates.en.jitter_high.summary: bad template '{place} }': "
        "Single '}' encountered in format string",
    ),
    (
        "bad conversion",
        {"en": {"jitter_high": Template(summary="{place!x}")}},
        "alerts.templates.en.jitter_high.summary: bad template '{place!x}': "
        "Unknown conversion specifier x",
    ),
    (
        "bad format spec",
        {"en": {"jitter_high": Template(summary="{value:d}")}},
        "alerts.templates.en.jitter_high.summary: bad template '{value:d}': "
        "Unknown format code 'd' for object of type 'str'",
    ),
    (
        "unknown kind",
        {"vi": {"endpont_down": Template(summary="{place}")}},
        "alerts.templates.vi.endpont_down: unknown alert kind (expected one of: "
        + ", ".join(sorted(Kind))
        + ")",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "message"), [case[1:] for case in BAD], ids=[case[0] for case in BAD]
)
def test_bad_template(overrides: Mapping[str, Mapping[str, Template]], message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        Messages("vi", overrides)
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)


def test_unknown_locale() -> None:
    with pytest.raises(ValueError, match="unknown locale 'fr'"):
        Messages("fr")
