"""Per-endpoint series kept as rendered text; a scrape joins what is kept (issue 13).

Each endpoint's samples are rendered once per family when its round lands (and when a reload
changes its labels) and kept as bytes. A scrape joins them family by family, so it costs a
copy of what changed, not a render of every series. Samples print as prometheus_client prints
them (labels in name order, Go-style numbers), so the text equals a registry's render of the
same families; only the HELP/TYPE lines differ between the text and OpenMetrics formats.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from vcmon.http.metrics import (
    BASE_LABELS,
    ENDPOINT_FAMILIES,
    ROUND_STATS,
    STATES,
    Family,
    info_fields,
)
from vcmon.measure.results import EndpointRecord, Results, RttHistogram
from vcmon.states import State

GZIP_LEVEL = 1  # 47 MB of text at 10,000 endpoints: speed matters more than the last percent

Fragments = tuple[bytes, ...]  # one endpoint's samples, one item per ENDPOINT_FAMILIES entry
_BUCKET_LE = tuple(le for le, _ in RttHistogram().cumulative())


def format_value(value: float) -> str:
    """A sample value as the exposition formats print it (as prometheus_client and Go do):
    NaN, +Inf, -Inf, else Python's shortest repr, in exponent form from 10⁷ up."""
    v = float(value)
    if v != v:
        return "NaN"
    if v == math.inf:
        return "+Inf"
    if v == -math.inf:
        return "-Inf"
    text = repr(v)
    dot = text.find(".")
    if v > 0 and dot > 6:  # 12345678.5 → 1.23456785e+07; Go switches sooner than Python
        digits = (text[:dot] + text[dot + 1 :]).rstrip("0")
        mantissa = f"{digits[0]}.{digits[1:]}" if len(digits) > 1 else digits
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def escape_label_value(value: str) -> str:
    """A label value as the text formats quote it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _label_text(pairs: Iterable[tuple[str, str]]) -> str:
    return ",".join(f'{k}="{escape_label_value(v)}"' for k, v in sorted(pairs))


def _header(family: Family, openmetrics: bool) -> bytes:
    # The text format names a counter's family after its _total samples; OpenMetrics does not.
    name = family.name if openmetrics or family.type != "counter" else f"{family.name}_total"
    doc = family.help.replace("\\", "\\\\").replace("\n", "\\n")
    if openmetrics:
        doc = doc.replace('"', '\\"')
    return f"# HELP {name} {doc}\n# TYPE {name} {family.type}\n".encode()


_HEADERS = {om: tuple(_header(f, om) for f in ENDPOINT_FAMILIES) for om in (False, True)}


@dataclass(frozen=True, slots=True)
class _Labels:
    """One endpoint's label text, in name order, computed when its inventory entry changes."""

    record: EndpointRecord
    base: str  # district="…",endpoint="…",level="…",probe="…"
    info: bytes  # its whole vcmon_endpoint_info sample
    # Everything in a sample line but its value, made once per inventory change: a render
    # runs for every round and then only formats numbers.
    buckets: tuple[str, ...]  # 'vcmon_rtt_seconds_bucket{…,le="0.0005",…} ', one per bound
    stats: tuple[str, ...]  # 'vcmon_round_rtt_seconds{…,stat="min"} ', one per statistic
    states: dict[object, bytes]  # the whole vcmon_endpoint_state block, by current state

    @classmethod
    def of(cls, rec: EndpointRecord, info_names: list[str]) -> _Labels:
        ep = rec.endpoint
        values = (ep.id, rec.probe, ep.district, ep.level.value)
        pairs = list(zip(BASE_LABELS, values, strict=True))
        fields = info_fields(ep)
        info = _label_text([*pairs, *((k, fields.get(k, "")) for k in info_names)])
        b = _label_text(pairs)
        # "le" sorts among the base labels; reason, stat and state sort after every one.
        before_le = _label_text(p for p in pairs if p[0] < "le")
        after_le = _label_text(p for p in pairs if p[0] > "le")
        return cls(
            record=rec,
            base=b,
            info=f"vcmon_endpoint_info{{{info}}} 1.0\n".encode(),
            buckets=tuple(
                f'vcmon_rtt_seconds_bucket{{{before_le},le="{le}",{after_le}}} '
                for le in _BUCKET_LE
            ),
            stats=tuple(f'vcmon_round_rtt_seconds{{{b},stat="{name}"}} ' for name in ROUND_STATS),
            states={
                current: "".join(
                    f'vcmon_endpoint_state{{{b},state="{s}"}} {"1.0" if current == s else "0.0"}\n'
                    for s in STATES
                ).encode()
                for current in (None, *State)
            },
        )

    def render(self) -> Fragments:
        """The endpoint's samples as they stand, one bytes item per family."""
        # Runs for every round (1,000 a second at 10,000 endpoints): integers take a shortcut.
        rec, b, f = self.record, self.base, format_value
        hist = rec.histogram
        cumulative = list(itertools.accumulate(hist.counts))
        rtt = (
            "".join(
                f"{prefix}{v}\n"
                for prefix, v in zip(self.buckets, _counts(cumulative), strict=True)
            )
            + f"vcmon_rtt_seconds_count{{{b}}} {_counts(cumulative[-1:])[0]}\n"
            + f"vcmon_rtt_seconds_sum{{{b}}} {f(hist.total)}\n"
        ).encode()
        sent, received, late, dup, rounds, failures = _counts(
            [rec.sent, rec.received, rec.tally.late, rec.tally.duplicate, rec.rounds, rec.failures]
        )
        errors = "".join(
            f'vcmon_packets_error_total{{{b},reason="{escape_label_value(reason)}"}} {f(n)}\n'
            for reason, n in sorted(rec.tally.errors.items())
        ).encode()
        counters = (
            f"vcmon_packets_sent_total{{{b}}} {sent}\n".encode(),
            f"vcmon_packets_received_total{{{b}}} {received}\n".encode(),
            f"vcmon_packets_late_total{{{b}}} {late}\n".encode(),
            f"vcmon_packets_duplicate_total{{{b}}} {dup}\n".encode(),
            errors,
            f"vcmon_rounds_total{{{b}}} {rounds}\n".encode(),
            f"vcmon_round_failures_total{{{b}}} {failures}\n".encode(),
        )
        obs = rec.last
        if obs is None:  # never observed: counters, the (empty) histogram and info only
            return (b"", rtt, b"", b"", b"", b"", *counters, b"", b"", self.info)
        stats = (obs.rtt_min, obs.rtt_avg, obs.rtt_median, obs.rtt_max)
        round_rtt = "".join(
            f"{prefix}{_or_nan(v)}\n" for prefix, v in zip(self.stats, stats, strict=True)
        ).encode()
        state = self.states[rec.state]
        return (
            f"vcmon_up{{{b}}} {'1.0' if obs.up else '0.0'}\n".encode(),
            rtt,
            round_rtt,
            f"vcmon_jitter_seconds{{{b}}} {_or_nan(obs.jitter)}\n".encode(),
            f"vcmon_loss_ratio{{{b}}} {f(obs.loss_ratio)}\n".encode(),
            b"" if obs.mos is None else f"vcmon_mos{{{b}}} {f(obs.mos)}\n".encode(),
            *counters,
            state,
            f"vcmon_last_round_timestamp_seconds{{{b}}} {f(obs.started_at)}\n".encode(),
            self.info,
        )


def _counts(values: list[int]) -> list[str]:
    """Non-negative integers as format_value prints them: "12.0", or 1.2345678e+07 from 10⁶."""
    if max(values) < 1_000_000:
        return [f"{v}.0" for v in values]
    return [format_value(v) for v in values]


def _or_nan(value: float | None) -> str:
    return "NaN" if value is None else format_value(value)


class EndpointExposition:
    """The per-endpoint series of ``results``: rendered as rounds land, joined at scrape time.

    Used from the event loop only; what a render thread reads is a snapshot of immutable bytes.
    """

    def __init__(self, results: Results) -> None:
        self._results = results
        # By (endpoint id, probe): an endpoint carrying several probes has series for each.
        self._labels: dict[tuple[str, str], _Labels] = {}
        self._fragments: dict[tuple[str, str], Fragments] = {}
        self._generation = -1
        self.sync()

    def update(self, rec: EndpointRecord) -> None:
        """Re-render ``rec``: its round landed, or its state or counters changed."""
        if self._generation != self._results.generation:
            self.sync()
        key = rec.key
        labels = self._labels.get(key)
        if labels is not None and labels.record is rec:  # else no longer in the inventory
            self._fragments[key] = labels.render()

    def sync(self) -> None:
        """Adopt the inventory after Results.replace: removed endpoints' series go, endpoints
        whose labels changed are rendered anew, the others keep what they have."""
        records = list(self._results)
        # Free labels differ between endpoints; every info sample carries the union of names.
        info_names = sorted({k for rec in records for k in info_fields(rec.endpoint)})
        labels: dict[tuple[str, str], _Labels] = {}
        fragments: dict[tuple[str, str], Fragments] = {}
        for rec in records:
            eid = rec.key
            new = labels[eid] = _Labels.of(rec, info_names)
            old = self._labels.get(eid)
            kept = self._fragments.get(eid)
            if old is None or kept is None or old.record is not rec or old.base != new.base:
                fragments[eid] = new.render()
            else:  # same series; at most the info sample changed
                fragments[eid] = (*kept[:-1], new.info)
        self._labels, self._fragments = labels, fragments
        self._generation = self._results.generation

    def snapshot(self) -> list[Fragments]:
        """What a scrape joins: every endpoint's fragments as they stand now (cheap: no copy)."""
        if self._generation != self._results.generation:
            self.sync()
        return list(self._fragments.values())


def chunks(snapshot: list[Fragments], openmetrics: bool) -> Iterator[bytes]:
    """The per-endpoint part of a page: each family's HELP and TYPE, then all its samples.

    A family without samples (no endpoint observed yet) is left out, as prometheus_client
    would print only its header."""
    for header, column in zip(_HEADERS[openmetrics], zip(*snapshot, strict=True), strict=False):
        samples = b"".join(column)
        if samples:
            yield header
            yield samples


@dataclass(frozen=True, slots=True)
class Format:
    """A negotiated exposition format: its Content-Type and how the registry renders in it."""

    content_type: str
    openmetrics: bool
    encoder: Callable[[CollectorRegistry], bytes]

    def page(self, snapshot: list[Fragments], registry: CollectorRegistry, gzip: bool) -> bytes:
        """The whole page, gzip-compressed if asked; run it in a thread (compression and large
        joins release the GIL). The registry's part comes last: OpenMetrics ends in # EOF."""
        parts = itertools.chain(chunks(snapshot, self.openmetrics), (self.encoder(registry),))
        if not gzip:
            return b"".join(parts)
        z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        out = [z.compress(part) for part in parts]
        out.append(z.flush())
        return b"".join(out)


def negotiate(accept: str) -> Format:
    """The format a scraper's Accept header asks for, as prometheus_client chooses it.

    Every name here is a legacy one, which every escaping scheme leaves as it is except
    ``dots`` (it doubles underscores); those scrapers are answered with ``underscores``, which
    the response's Content-Type says, and which gives them the same names."""
    encoder, content_type = choose_encoder(accept)
    if "escaping=dots" in content_type:
        encoder, content_type = choose_encoder(accept.replace("dots", "underscores"))
    om = content_type.startswith("application/openmetrics-text")
    return Format(content_type, om, encoder)


def accepts_gzip(accept_encoding: str) -> bool:
    """True if an Accept-Encoding header takes gzip (and not with q=0)."""
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        if coding.strip().lower() != "gzip":
            continue
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False
