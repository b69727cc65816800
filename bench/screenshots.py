"""The pictures in the README and docs/: every tab of the web demo, and the dashboard, as the project draws them.

    python bench/screenshots.py docs/images      # sample, inside, dial, why, compare, train, curves, dashboard
                                                 # .png, and sample-phone, inside-phone .png

Starts `python app.py` on the shipped models and `streamlit run dashboard/main.py` (free ports, offline, no
telemetry), drives each page in the headless Chromium the tests use (`tests/browser.py`, `tests/servers.py`) into a
state worth showing (Sample after a generation with its bars, the dial, "Why this token?" on a word clicked with the
dial's unit held, Inside the LSTM on its cell atlas, Compare with its bits-per-character table, Train mid-run with its
curve and samples, Training curves, the dashboard's chart; then Sample
and Inside the LSTM again as a phone shows them, 390 CSS pixels wide), crops each to what matters and writes it as a
palette PNG (Pillow), so the ten stay a few hundred KB in all. Re-run it whenever the UI changes; it takes about
three minutes.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from browser import chromium_page  # noqa: E402
from servers import free_port, serving  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
       "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1"}
ENV.pop("LMDEMO_MODELS", None)
WAIT_MS = 120_000  # a step's longest wait, on a busy 2-core machine
TRAIN_SHOT_AFTER_S = 30  # the Train tab is shown this far into its 60 s run: the curve has fallen, samples read
SAMPLE_MODEL, SAMPLE_PROMPT = "shakespeare-char", "ROMEO:\n"  # characters: short columns, a readable heatmap
DIAL_MODEL, DIAL_PROMPT = "imdb-word", "this movie was"  # its atlas has a sentiment unit: the Sample tab's dial
WHY_WORDS = ("good", "bad", "great", "best", "worst", "terrible", "awful", "boring")  # a word worth explaining
COLOURS = 256  # a palette this size keeps text and charts crisp at a fraction of the RGB size
PHONE = {"width": 390, "height": 844}  # CSS pixels: a common phone held upright


def save(page: Any, path: Path, top: Any, bottom: Any, left: Any = None, margin: int = 12) -> None:
    """The band of the page from `top`'s top edge to `bottom`'s bottom edge (right of `left`'s left edge, else the
    full width), as a palette PNG."""
    first, last = top.bounding_box(), bottom.bounding_box()  # where they are in the window, scrolled as it is
    scrolled = page.evaluate("window.scrollY")
    x = left.bounding_box()["x"] if left is not None else 0
    clip = dict(x=x, y=max(0, scrolled + first["y"] - margin), width=page.viewport_size["width"] - x,
                height=last["y"] + last["height"] - first["y"] + 2 * margin)
    image = Image.open(io.BytesIO(page.screenshot(full_page=True, clip=clip))).convert("RGB")
    image.quantize(colors=COLOURS, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"{path}: {image.width}×{image.height}, {path.stat().st_size // 1024} KB", flush=True)


def choose_model(page: Any, model: str, prompt: str) -> None:
    """The Sample tab's model and prompt (typed once the model's card is shown: choosing a model puts its own example
    in the prompt)."""
    page.get_by_label("Model", exact=True).first.click()
    page.get_by_role("option", name=model).click()
    page.locator("[role=tabpanel]:visible").get_by_text(f"{model} — ").first.wait_for(timeout=WAIT_MS)
    page.get_by_role("textbox", name="Prompt").first.fill(prompt)


def generate(page: Any) -> None:
    """Generate, until the samples are done."""
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("Done", exact=False).first.wait_for(timeout=WAIT_MS)


def settled(page: Any) -> None:
    """Until no component is still updating."""
    page.wait_for_function("!document.querySelector('.pending, .generating')", timeout=WAIT_MS)


def app_pictures(url: str, out: Path) -> None:
    """Sample, Inside the LSTM, Compare, Train and Training curves, in that order (Inside reads Sample's text)."""
    with chromium_page(url) as page:
        shown = page.locator("[role=tabpanel]:visible")
        choose_model(page, SAMPLE_MODEL, SAMPLE_PROMPT)
        generate(page)
        bars = shown.locator(".js-plotly-plot").last
        bars.wait_for(timeout=WAIT_MS)
        save(page, out / "sample.png", page.get_by_role("heading", name="Samples"), bars)

        page.get_by_role("tab", name="Inside the LSTM").click()
        unit = page.locator("#atlas-unit")  # the tab opens on the atlas's first property, over the text and examples
        unit.locator(".lm-text .tok").first.wait_for(timeout=WAIT_MS)
        settled(page)
        page.wait_for_timeout(500)  # the fade-in after an update
        save(page, out / "inside.png", page.locator("#atlas-status"), unit)

        page.get_by_role("tab", name="Sample").click()
        choose_model(page, DIAL_MODEL, DIAL_PROMPT)
        dial_on = page.get_by_label("Dial sentiment: hold its unit (samples without and with the dial, same seed)")
        dial_on.wait_for(state="visible", timeout=WAIT_MS)
        dial_on.check()
        page.wait_for_function("() => [...document.querySelectorAll('textarea, input')]"
                               ".some(e => /^\\d+:\\d+:[hc]=/.test(e.value))", timeout=WAIT_MS)  # the dial is set
        generate(page)
        settled(page)
        save(page, out / "dial.png", page.get_by_role("heading", name="Samples"), shown.locator(".lm-col").last)
        why_picture(page, out)

        page.get_by_role("tab", name="Compare").click()
        page.get_by_role("button", name="Compare", exact=True).click()
        page.get_by_text("validation (training log)").wait_for(timeout=WAIT_MS)
        save(page, out / "compare.png", page.get_by_role("button", name="Compare", exact=True),
             shown.locator(".lm-col").last)

        page.get_by_role("tab", name="Train", exact=True).click()
        page.locator("#train-button").click()
        page.wait_for_timeout(TRAIN_SHOT_AFTER_S * 1000)
        save(page, out / "train.png", page.get_by_role("tab", name="Train", exact=True), page.locator("#train-curve"))
        page.locator("#train-stop").click()

        page.get_by_role("tab", name="Training curves").click()
        page.locator("#curves-plot .js-plotly-plot").wait_for(timeout=WAIT_MS)
        save(page, out / "curves.png", page.get_by_role("tab", name="Training curves"), page.locator("#curves-plot"))


def why_picture(page: Any, out: Path) -> None:
    """"Why this token?" after the dial's run: a sentiment word of the first sample clicked (else its fourth token),
    with the dial's unit (imdb-word's sentiment unit, named by the atlas) held beside the units it shows."""
    tokens = page.locator("#samples .lm-col").first.locator(".tok")
    words = [word.strip() for word in tokens.all_text_contents()]
    position = next((i for i, word in enumerate(words) if word in WHY_WORDS), 3)
    tokens.nth(position).click()
    page.locator("#why-token").get_by_text(f"position {position} of the sample").wait_for(timeout=WAIT_MS)
    dial = page.get_by_role("textbox", name="Dial (LAYER:UNIT:QUANTITY=VALUE, empty = off)").input_value()
    page.locator("#why-hold textarea").fill(dial)
    page.locator("#why-hold-button").click()
    page.locator("#why-token tr").nth(11).wait_for(timeout=WAIT_MS)  # a heading, 10 units shown, and the dial's
    settled(page)
    heading = page.get_by_role("heading", name="Why this token?")
    save(page, out / "why.png", heading, page.locator("#why-hold-button"), left=heading)


def phone_pictures(url: str, out: Path) -> None:
    """Sample and Inside the LSTM on a phone: the tabs wrap onto two lines, columns and cards stack, the atlas table
    scrolls sideways in its own box."""
    with chromium_page(url) as page:
        page.set_viewport_size(PHONE)
        shown = page.locator("[role=tabpanel]:visible")
        choose_model(page, SAMPLE_MODEL, SAMPLE_PROMPT)
        generate(page)
        bars = shown.locator(".js-plotly-plot").last
        bars.wait_for(timeout=WAIT_MS)
        settled(page)
        save(page, out / "sample-phone.png", page.get_by_role("heading", name="Samples"), bars)

        page.get_by_role("tab", name="Inside the LSTM").click()
        unit = page.locator("#atlas-unit")
        unit.locator(".lm-text .tok").first.wait_for(timeout=WAIT_MS)
        settled(page)
        page.wait_for_timeout(500)  # the fade-in after an update
        save(page, out / "inside-phone.png", page.get_by_role("tablist"), unit)


def dashboard_picture(url: str, out: Path) -> None:
    """The dashboard's title and chart of every shipped model's log (its sidebar names this machine's folders)."""
    with chromium_page(url) as page:
        chart = page.locator("[data-testid=stPlotlyChart]").first
        chart.locator(".js-plotly-plot").wait_for(timeout=WAIT_MS)
        save(page, out / "dashboard.png", page.get_by_role("heading", name="Training dashboard"), chart,
             left=page.locator("[data-testid=stMain]"))


def with_server(command: list[str], health: str, log: Path, take: Callable[[str], None], url: str) -> None:
    with serving(command, health, log, cwd=ROOT, env=ENV):
        take(url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the PNGs (docs/images for the README's)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="lmdemo-screenshots-"))
    try:
        port = free_port()
        app = f"http://127.0.0.1:{port}/"
        with_server([sys.executable, "app.py", "--port", str(port)], app, logs / "app.log",
                    lambda url: (app_pictures(url, args.out), phone_pictures(url, args.out)), app)
        port = free_port()
        dashboard = f"http://127.0.0.1:{port}"
        with_server([sys.executable, "-m", "streamlit", "run", "dashboard/main.py", "--server.port", str(port),
                     "--server.headless", "true", "--browser.gatherUsageStats", "false"],
                    f"{dashboard}/_stcore/health", logs / "dashboard.log", lambda url: dashboard_picture(url, args.out),
                    dashboard)
    except (pytest.fail.Exception, pytest.skip.Exception) as error:  # a server that never answered, no browser
        print(f"screenshots: {error} (logs in {logs})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
