"""Form values to checked settings: what a request may ask for, and messages that name the field.

Values arrive as the page or an API caller sent them (text, numbers, None), so every parser takes
anything and either returns a clean value or raises `SettingsError` with words a user can act on.
Sizes are checked before anything is parsed or encoded: an API caller is not bound by the page.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lmdemo.generation import SEED_LIMIT, Dial, Sampling, SettingsError

FIELD_CHARS = 100  # the most characters of a short field: numbers, temperatures, the stop text
DRAWN_SEED_LIMIT = 2**32  # seeds the random-seed button draws: short enough to read back and retype


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask for, so one user cannot hold the server for long."""

    max_prompt_chars: int = 10_000  # longer prompts are refused before they are encoded
    max_prompt_tokens: int = 1000  # longer prompts keep their last this-many tokens
    max_new_tokens: int = 1000
    max_temperatures: int = 8
    max_bars: int = 50
    max_inside_tokens: int = 300  # "Inside the LSTM" shows the last this-many tokens of a text
    max_units: int = 64  # and draws at most this many units


def read_prompt(value: Any, limits: Limits) -> str:
    """A prompt as text (None is empty), refused when longer than `limits.max_prompt_chars`."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SettingsError(f"the prompt must be text (got {type(value).__name__})")
    if len(value) > limits.max_prompt_chars:
        raise SettingsError(f"the prompt has {len(value):,} characters; at most {limits.max_prompt_chars:,} are "
                            f"read: shorten it (only its last {limits.max_prompt_tokens:,} tokens are used anyway)")
    return value


def read_sampling(limits: Limits, temperatures: Any, max_new_tokens: Any, top_k: Any, top_p: Any, seed: Any,
                  stop: Any = None, avoid_unk: Any = False, dial: Any = None) -> Sampling:
    """Sampling settings from form values (text or numbers), checked against the limits; an empty dial is off."""
    stop = _short_text(stop, "the stop text") if stop not in (None, "") else None
    dial_text = "" if dial is None else _short_text(dial, "the dial").strip()
    sampling = Sampling(temperatures=parse_temperatures(temperatures, limits.max_temperatures),
                        max_new_tokens=parse_whole(max_new_tokens, "max new tokens"),
                        top_k=parse_whole(top_k, "top-k"), top_p=parse_number(top_p, "top-p"), seed=parse_seed(seed),
                        stop=stop, avoid_unk=bool(avoid_unk), dial=Dial.parse(dial_text) if dial_text else None)
    sampling.check(limits.max_new_tokens)
    return sampling


def parse_temperatures(value: str | Sequence[float], limit: int = 8) -> list[float]:
    """Temperatures from "0.2, 0.5 1.0" (commas or spaces) or a list of numbers."""
    parts = re.split(r"[,\s;]+", _short_text(value, "temperatures").strip()) if isinstance(value, str) \
        else list(value)
    parts = [p for p in parts if p != ""]
    if not parts:
        raise SettingsError("give at least one temperature, e.g. 0.2, 0.8, 1.2")
    temperatures = []
    for part in parts:
        number = parse_number(part, "each temperature")
        if number < 0:
            raise SettingsError(f"temperatures must be 0 (greedy) or positive (got {part})")
        temperatures.append(number)
    if len(temperatures) > limit:
        raise SettingsError(f"at most {limit} temperatures at once (got {len(temperatures)})")
    return temperatures


def parse_seed(value: Any) -> int:
    """A seed from a form: whole numbers from 0 to 2**64-1, as text or a number."""
    seed = parse_whole(value, "seed")
    if not 0 <= seed < SEED_LIMIT:
        raise SettingsError(f"seed must be from 0 to 2**64-1 = {SEED_LIMIT - 1} (got {seed})")
    return seed


def parse_number(value: Any, what: str) -> float:
    """A finite number from a form value (a number or its text); `what` names the field in the message."""
    if isinstance(value, bool):
        raise SettingsError(f"{what} must be a number (got {value!r})")
    text = None if isinstance(value, (int, float)) else _short_text(value, what).strip()
    try:
        number = float(value) if text is None else float(text)
    except (ValueError, OverflowError):  # OverflowError: an int too large for a float
        raise SettingsError(f"{what} must be a number (got {value!r})") from None
    if not math.isfinite(number):
        raise SettingsError(f"{what} must be a finite number (got {value!r})")
    return number


def parse_whole(value: Any, what: str, empty: int | None = None) -> int:
    """A whole number from a form value, exact even past 2**53; `empty` is what None or "" stands for, if anything."""
    if empty is not None and value in (None, ""):
        return empty
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = "" if value is None else _short_text(value, what).strip()
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    try:
        number: float | None = parse_number(value, what)
    except SettingsError:
        number = None
    if number is None or not number.is_integer():
        raise SettingsError(f"{what} must be a whole number (got {value!r})")
    return int(number)


def draw_seed() -> int:
    """A fresh random seed for the dice button."""
    return secrets.randbelow(DRAWN_SEED_LIMIT)


def _short_text(value: Any, what: str) -> str:
    """`value` as text, refused (without echoing it) when longer than a short field may be."""
    text = str(value)
    if len(text) > FIELD_CHARS:
        raise SettingsError(f"{what} is {len(text):,} characters long; at most {FIELD_CHARS} are accepted")
    return text
