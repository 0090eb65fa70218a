"""Secrets planted where a config holds them (a Telegram-like bot token in a webhook URL,
user:password@ in a URL, an MQTT password, a password YAML reads as a number): none may show
in the daemon's whole log at debug level or in `vcmon check` output. Every sink points at a
closed loopback port, so each delivery fails and its failure path is logged too."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.attacks.common import (
    FAST,
    FIRE,
    ROOMS,
    Row,
    free_port,
    run_vcmon,
    running,
    wait_until,
)

TG_TOKEN = "7311984205:AAFbenchPlantedToken_q9Zx"
URL_PASSWORD = "url-Planted-Passw0rd"
HOOK = "hook-benchPlantedPath77"
MQTT_PASSWORD = "mqtt-Planted-Passw0rd"
NUMBER_PASSWORD = "98765432"
SINKS = ("telegram", "userinfo", "mqtt")
SECRETS = (TG_TOKEN, "AAFbenchPlantedToken", URL_PASSWORD, HOOK, MQTT_PASSWORD)


def _config(closed: int, closed_mqtt: int) -> str:
    return (
        FAST + "alerts:\n  state_file: state/vcmon.db\n" + FIRE + "sinks:\n"
        "  - {type: webhook, name: telegram, body: telegram, chat_id: '-1001234567890',"
        f" group: false, url: 'http://127.0.0.1:{closed}/bot{TG_TOKEN}/sendMessage'}}\n"
        f"  - {{type: webhook, name: userinfo, url: 'http://ops:{URL_PASSWORD}@127.0.0.1:{closed}"
        f"/hooks/{HOOK}'}}\n"
        f"  - {{type: mqtt, host: 127.0.0.1, port: {closed_mqtt}, username: vcmon,"
        f" password: '{MQTT_PASSWORD}'}}\n"
        "endpoints:\n" + ROOMS
    )


def _leaks(text: str, secrets: tuple[str, ...] = SECRETS) -> list[str]:
    return [s for s in secrets if s in text]


def attacks(tmp: Path, duration: float, notes: dict[str, Any]) -> list[Row]:
    """The daemon's log, `vcmon check` output and the state file's mode."""
    rows: list[Row] = []
    old = os.umask(0o022)  # the usual umask outside systemd; the daemon inherits it
    try:
        with running(
            tmp, _config(free_port(), free_port()), name="secrets", log_level="debug"
        ) as d:

            def failed_sends() -> bool:
                # A failing sink is logged when it starts failing, not at every retry.
                text = d.log_text()
                failed = all(f"sink_send_failed sink={s}" in text for s in SINKS)
                return failed and "mqtt_connect_failed" in text

            wait_until(failed_sends, 30, "failed sends to every sink logged")
        log = d.log_text()
    finally:
        os.umask(old)
    leaked = _leaks(log)
    rows.append(
        (
            "secrets: daemon log at debug, every sink failing",
            not leaked,
            f"{len(leaked)} of {len(SECRETS)} planted secrets in {len(log.splitlines())} "
            f"lines" + (f": {leaked}" if leaked else ""),
        )
    )
    checked = run_vcmon("check", "-c", str(d.config))
    number = d.config.with_name("number.yaml")
    number.write_text(d.config.read_text().replace(f"'{MQTT_PASSWORD}'", NUMBER_PASSWORD), "utf-8")
    refused = run_vcmon("check", "-c", str(number))
    shown = _leaks(
        checked.out + checked.err + refused.out + refused.err, (*SECRETS, NUMBER_PASSWORD)
    )
    rows.append(
        (
            "secrets: vcmon check, incl. a password YAML reads as a number",
            not shown and checked.code == 0 and refused.code == 2,
            f"exit {checked.code} and {refused.code}; {len(shown)} secrets shown"
            + (f": {shown}" if shown else ""),
        )
    )
    state = d.config.parent / "state"
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (state, *state.iterdir())}
    private = modes[state.name] == "0o700" and all(
        m == "0o600" for n, m in modes.items() if n != state.name
    )
    notes["modes"] = modes
    rows.append(
        (
            "secrets: state directory and files under umask 022",
            private,
            ", ".join(f"{n} {m[2:]}" for n, m in modes.items()),
        )
    )
    return rows
