"""Who is asking, and how much training they have had: the fair-share rules for strangers.

A Gradio session id is chosen by the client, so limits keyed on it are no limits: one script can open as
many sessions as it likes. Limits are keyed on the client's address instead. Behind a reverse proxy (a
Hugging Face Space, or `--behind-proxy`), every request comes from the proxy, which appends the address
it saw to `X-Forwarded-For`; the last entry is the one the proxy wrote, the earlier ones are whatever the
client sent and are never trusted. Without a proxy, the header is the client's own words and is ignored.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

HOUR_S = 3600.0


def client_address(host: str | None, headers: Mapping[str, str], behind_proxy: bool) -> str:
    """The address limits are keyed on: the proxy's last `X-Forwarded-For` entry behind a proxy, else the peer."""
    if behind_proxy:
        forwarded = [part.strip() for part in headers.get("x-forwarded-for", "").split(",") if part.strip()]
        if forwarded:
            return forwarded[-1]
    return host or "unknown"


def request_address(request: Any, behind_proxy: bool) -> str:
    """`client_address` of a Gradio request (its peer and headers)."""
    return client_address(request.client.host if request.client else None, request.headers, behind_proxy)


class TrainingBudget:
    """Seconds of training each client had in the last hour: a job is charged its whole budget when it starts,
    and what it did not use is given back when it ends."""

    def __init__(self, seconds_per_hour: float):
        self.seconds_per_hour = seconds_per_hour
        self.charges: dict[str, list[list[float]]] = defaultdict(list)  # client -> [[when, seconds], ...]

    def used(self, client: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        charges = [c for c in self.charges.get(client, []) if now - c[0] < HOUR_S]
        if charges:
            self.charges[client] = charges
        else:
            self.charges.pop(client, None)
        return sum(seconds for _, seconds in charges)

    def refusal(self, client: str, seconds: float, now: float | None = None) -> str | None:
        """Why `client` may not train `seconds` more now, in one line with when to come back; None if it may."""
        now = time.monotonic() if now is None else now
        used = self.used(client, now)
        if used + seconds <= self.seconds_per_hour:
            return None
        left = self.seconds_per_hour - used
        frees, freed = now, 0.0  # when enough of the hour's charges expire
        for when, charged in sorted(self.charges.get(client, [])):
            frees, freed = when + HOUR_S, freed + charged
            if left + freed >= seconds:
                break
        wait = max(1, round((frees - now) / 60))
        smaller = f"; a budget of at most {left:.0f} s fits now" if left >= 1 else ""
        return (f"you have trained {used:.0f} s of the {self.seconds_per_hour:.0f} s each visitor may train per hour "
                f"on this server: {seconds:g} s more fits in about {wait} minute{'s' if wait != 1 else ''}{smaller}")

    def charge(self, client: str, seconds: float) -> list[float]:
        """Charge `seconds` now; returns the charge, whose seconds `settle` lowers to what the job used."""
        entry = [time.monotonic(), seconds]
        self.charges[client].append(entry)
        return entry

    @staticmethod
    def settle(charge: list[float], used: float) -> None:
        charge[1] = min(charge[1], max(0.0, used))
