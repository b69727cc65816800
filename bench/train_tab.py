"""How fast the Train tab learns: press Train in a headless Chromium and time the validation curve.

    python bench/train_tab.py                               # Tiny Shakespeare, the tab's defaults
    python bench/train_tab.py --screenshot train-tab.png    # and a screenshot of the tab mid-run

Starts `python app.py` (its --train-seconds default), opens the page in Debian's Chromium, picks the Train
tab and presses Train with everything left at its default, then reads the drawn figure (the validation
trace's points: wall time of the run, loss in nats/char) every half second until the job is done. Prints
the seconds from the click until the validation loss first drew below --below (2.0 nats/char), and the
last validation loss.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1"}
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
VALIDATION = """() => {
  const g = document.querySelector('#train-curve .js-plotly-plot');
  if (!g || !g._fullData) return [];
  const t = g._fullData.find(trace => (trace.name || '').endsWith('· validation'));
  return t ? Array.from(t.y).slice(0, t._length) : [];
}"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=7873)
    parser.add_argument("--below", type=float, default=2.0, help="the validation loss to time (nats/char)")
    parser.add_argument("--screenshot", type=Path, help="save a screenshot of the tab this far into the run")
    parser.add_argument("--screenshot-at", type=float, default=35.0, help="seconds after the click (default: 35)")
    parser.add_argument("app_args", nargs="*", help="after --: options for app.py")
    args = parser.parse_args(argv)
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(args.port), *args.app_args],
                              cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{args.port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("app.py did not start")
                time.sleep(0.5)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.get_by_role("tab", name="Train", exact=True).click()
            page.get_by_role("button", name="Train", exact=True).click()
            clicked = time.monotonic()
            below_at, shot, losses = None, args.screenshot is None, []
            status = page.locator("#train-status")
            while True:
                losses = page.evaluate(VALIDATION)
                now = time.monotonic() - clicked
                if below_at is None and any(loss < args.below for loss in losses):
                    below_at = now
                    print(f"{now:6.1f} s: validation loss {min(losses):.3f} < {args.below:g}: {status.inner_text()}")
                if not shot and now >= args.screenshot_at:
                    page.screenshot(path=str(args.screenshot), full_page=True)
                    print(f"{now:6.1f} s: screenshot {args.screenshot}")
                    shot = True
                text = status.inner_text()
                if text.startswith(("Done", "Stopped", "Training failed")):
                    break
                if now > 600:
                    raise SystemExit(f"no end after 600 s: {text}")
                time.sleep(0.5)
            print(f"{time.monotonic() - clicked:6.1f} s: {text}")
            print(f"validation losses drawn (nats/char): {', '.join(f'{x:.3f}' for x in losses)}")
            print(f"below {args.below:g} nats/char {below_at:.1f} s after the click" if below_at is not None else
                  f"never below {args.below:g} nats/char")
            print("samples at the end:\n" + page.locator("#train-samples").inner_text()[:800])
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
