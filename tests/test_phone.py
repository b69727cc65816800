"""The page as a first visit meets it, on a phone too (issue 30): at 390 × 844 CSS pixels every tab is in sight
without a menu, each tab's main action runs, nothing is wider than the screen, no table column is too narrow to read
and no toolbar covers a chart's title; a refused setting leaves the samples in view; Compare's two sides line up and
say why a figure is a lower bound once.

One `python app.py` on the tests' small models: the character model with a cell atlas (so the Inside tab opens on
its table and unit view), the word model (whose figures are lower bounds) and the BPE model.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from browser import chromium_page
from servers import app_serving
from test_atlas_view import atlas_model  # noqa: F401 - the fixture: the character model with an atlas of its own

from lmdemo.tokenizer import LOWER_BOUND

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1400, "height": 1000}
WAIT_MS = 120_000
TABS = ["Sample", "Inside the LSTM", "Compare", "Train", "Training curves"]
# boxes that scroll sideways on purpose: a table scrolls inside its own box rather than squeezing its columns
SCROLLERS = ".virtual-table-viewport, .prose table"
OFF_SCREEN = "#js-plotly-tester"  # where Plotly measures text: an SVG it keeps 10,000 px off-screen on purpose

# Everything visible that sticks out of the screen sideways, unless inside one of the `scrollers` (which must itself
# fit the screen and scroll); the visible table cells narrower than three characters of their own font; the chart
# titles a toolbar button covers (a rendered one: Plotly shows its toolbar on a tap where there is no hover).
LAYOUT_PROBLEMS = """([scrollers, offScreen]) => {
  const width = document.documentElement.clientWidth;
  const shown = (e) => e.checkVisibility({opacityProperty: true, visibilityProperty: true});
  const name = (e) => `${e.tagName.toLowerCase()}${e.id ? "#" + e.id : ""}.${String(e.className.baseVal ?? e.className)
    .trim().split(/\\s+/).slice(0, 3).join(".")} "${(e.innerText ?? e.textContent ?? "").trim().slice(0, 40)}"`;
  const wide = [];
  for (const element of document.querySelectorAll("body *")) {
    const box = element.getBoundingClientRect();
    if (!box.width || !box.height || (box.left >= -0.5 && box.right <= width + 0.5) || !shown(element)
        || element.closest(offScreen)) continue;
    const scroller = element.parentElement && element.parentElement.closest(scrollers);
    if (scroller) {
      const own = scroller.getBoundingClientRect();
      if (own.left >= -0.5 && own.right <= width + 0.5 && ["auto", "scroll"].includes(getComputedStyle(
          scroller).overflowX)) continue;
    }
    wide.push(`${name(element)}: ${Math.round(box.left)}..${Math.round(box.right)} px`);
  }
  const probe = document.createElement("span");
  probe.textContent = "000";
  probe.style.cssText = "position: absolute; visibility: hidden; white-space: pre";
  document.body.append(probe);
  const narrow = [];
  for (const cell of document.querySelectorAll("td, th, [role=gridcell], [role=columnheader]")) {
    if (!shown(cell) || !cell.getBoundingClientRect().width) continue;
    const style = getComputedStyle(cell);
    probe.style.font = style.font;
    const inside = cell.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    if (inside < probe.getBoundingClientRect().width) narrow.push(`${name(cell)}: ${Math.round(inside)} px`);
  }
  probe.remove();
  const covered = [];
  for (const title of document.querySelectorAll(".js-plotly-plot .gtitle")) {
    const t = title.getBoundingClientRect();
    for (const button of document.querySelectorAll(".js-plotly-plot .modebar-btn")) {
      const b = button.getBoundingClientRect();
      if (button.checkVisibility() && b.width && b.left < t.right && t.left < b.right && b.top < t.bottom
          && t.top < b.bottom)
        covered.push(`"${title.textContent.slice(0, 40)}" under ${button.getAttribute("data-title")}`);
    }
  }
  return {page: document.documentElement.scrollWidth - width, wide: wide.slice(0, 12), narrow: narrow.slice(0, 12),
          covered: covered.slice(0, 6)};
}"""


@pytest.fixture(scope="module")
def server(atlas_model, word_model, bpe_model, tmp_path_factory) -> Iterator[str]:  # noqa: F811 - the fixture above
    with app_serving([atlas_model, word_model, bpe_model], tmp_path_factory, name="phone-app") as url:
        yield url


def settled(page) -> None:
    """Until no output is still updating."""
    page.wait_for_function("!document.querySelector('.pending, .generating')", timeout=WAIT_MS)


def assert_fits(page, tab: str) -> None:
    problems = page.evaluate(LAYOUT_PROBLEMS, [SCROLLERS, OFF_SCREEN])
    assert problems == {"page": 0, "wide": [], "narrow": [], "covered": []}, f"{tab} at 390 px: {problems}"


@pytest.mark.browser
def test_every_tab_fits_a_phone_and_runs_its_main_action(server):
    with chromium_page(server) as page:
        page.set_viewport_size(PHONE)
        for tab in TABS:  # all five in sight and within the screen: none hidden behind a menu
            box = page.get_by_role("tab", name=tab, exact=True).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], f"tab {tab}: {box}"

        page.get_by_role("button", name="Generate").click()
        page.locator("#samples .lm-col").first.wait_for(timeout=WAIT_MS)
        page.get_by_text("Next token after").first.wait_for(timeout=WAIT_MS)  # the bars, once the run is done
        settled(page)
        assert_fits(page, "Sample")

        page.get_by_role("tab", name="Inside the LSTM").click()
        page.locator("#atlas-unit .lm-text .tok").first.wait_for(timeout=WAIT_MS)  # the atlas row's unit, coloured
        page.get_by_text("Detailed view").click()
        page.get_by_role("button", name="Show units").click()
        page.locator("#inside-heatmap .hm image").wait_for(timeout=WAIT_MS)
        settled(page)
        assert page.locator("#atlas-table [role=gridcell]").count() > 0
        assert_fits(page, "Inside the LSTM")

        page.get_by_role("tab", name="Compare").click()
        page.get_by_role("button", name="Compare", exact=True).click()
        page.get_by_text("validation (training log)").wait_for(timeout=WAIT_MS)
        settled(page)
        assert_fits(page, "Compare")

        page.get_by_role("tab", name="Train", exact=True).click()
        page.locator("#train-button").wait_for(timeout=WAIT_MS)
        assert_fits(page, "Train")

        page.get_by_role("tab", name="Training curves").click()
        page.locator("#curves-plot .js-plotly-plot .gtitle").wait_for(timeout=WAIT_MS)
        assert_fits(page, "Training curves")
        assert not page.elsewhere, f"the page fetched from other hosts: {page.elsewhere}"


@pytest.mark.browser
def test_a_refused_setting_leaves_the_samples_in_view(server):
    """An invalid temperature is told in a toast; the samples of the run before stay as they were, uncovered (Gradio
    used to lay a red "Error" pill over every output)."""
    with chromium_page(server) as page:
        page.set_viewport_size(PHONE)
        page.get_by_role("button", name="Generate").click()
        page.get_by_text("Next token after").first.wait_for(timeout=WAIT_MS)
        settled(page)
        page.get_by_label("Temperatures", exact=False).first.fill("warm")
        page.get_by_role("button", name="Generate").click()
        page.get_by_text("each temperature must be a number (got 'warm')").wait_for(timeout=WAIT_MS)
        settled(page)
        over = page.locator("#samples").evaluate("""samples => {
            const s = samples.getBoundingClientRect();
            const overlaps = (e) => { const b = e.getBoundingClientRect();
                return b.width && b.left < s.right && s.left < b.right && b.top < s.bottom && s.top < b.bottom; };
            return [...document.querySelectorAll("[data-testid=status-tracker], [data-testid=status-tracker] *")]
                .filter(e => e.checkVisibility({opacityProperty: true, visibilityProperty: true}) && overlaps(e))
                .map(e => `${e.tagName}.${e.className} "${e.textContent.trim().slice(0, 20)}"`); }""")
        assert over == [], f"over the samples: {over}"
        assert page.locator("#samples .lm-col").count() == 5


@pytest.mark.browser
def test_compares_sides_line_up_and_say_why_a_figure_is_a_lower_bound_once(server):
    """On a wide screen Compare's two models stand side by side, each part (card, samples, prompt, bars) level with
    the other's whichever card is longer; the word model's figures are lower bounds, and why is said once."""
    with chromium_page(server) as page:
        page.set_viewport_size(DESKTOP)
        page.get_by_role("tab", name="Compare").click()
        page.get_by_role("button", name="Compare", exact=True).click()
        page.get_by_text("validation (training log)").wait_for(timeout=WAIT_MS)
        panel = page.locator("[role=tabpanel]:visible")
        panel.locator(".js-plotly-plot .gtitle").nth(1).wait_for(timeout=WAIT_MS)
        settled(page)
        tops = panel.evaluate("""p => ['.lm-legend', '.lm-col', '.lm-prompt', '.js-plotly-plot'].map(part =>
            [...p.querySelectorAll(part)].filter(e => e.checkVisibility())
                .map(e => Math.round(e.getBoundingClientRect().top)))""")
        legends, columns, prompts, bars = tops
        assert len(legends) == 2 and legends[0] == legends[1], tops
        assert len(columns) == 4 and columns[0] == columns[2], tops  # each side's first sample column
        assert len(prompts) == 2 and prompts[0] == prompts[1], tops
        assert len(bars) == 2 and bars[0] == bars[1], tops
        text = panel.inner_text()
        assert text.count(LOWER_BOUND) == 1 and "a lower bound" in text.replace(LOWER_BOUND, ""), text
