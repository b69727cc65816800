"""The page: the tabs composed, in order (Sample, Inside the LSTM, Compare, Train, Training curves), with the
page-wide texts and the look it launches with.

Each tab lives in its own module (`sample_tab`, `inside_tab`, `compare_tab`, `train_tab`, `curves_tab`); this one
only places them and wires what crosses tabs: the Sample tab's text into Inside, a finished Train job's model into
every picker, and a link the page opens on (`lmdemo.web.links`) into its tab.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import gradio as gr

from lmdemo.web import compare_tab, curves_tab, inside_tab, links, sample_tab, train_tab
from lmdemo.web.demo import Demo
from lmdemo.web.forms import Limits
from lmdemo.web.gate import Gate
from lmdemo.web.inside import Inside
from lmdemo.web.jobs import TrainingLine
from lmdemo.web.registry import Models
from lmdemo.web.why_api import build as build_why_api

INTRO = """# LSTM language models, up close
Pick a model, give it a prompt and compare what it writes at several **temperatures** side by side.
Each token is shaded by how likely the model thought it was; the bars below show what it weighed up at any point."""


def answer_missing_optional_imports(names: tuple[str, ...] = ("matplotlib", "bokeh")) -> None:
    """Gradio tries `import matplotlib` twice and `import bokeh` once in every event; when they are not installed,
    each failed import searches every folder of `sys.path` again (about 6 % of a busy server's time, measured with
    py-spy under bench/load.py). A `None` in `sys.modules` makes such an import fail at once, without the search."""
    for name in names:
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            sys.modules[name] = None


def build_app(models: Models, limits: Limits = Limits(), training: TrainingLine | None = None,
              gate: Gate | None = None) -> gr.Blocks:
    """The page: a sampling tab (controls on the right, samples below, next-token bars at the bottom),
    a look inside the LSTM at the sampling tab's text, two models compared on one request, and the training
    curves; with `training`, a Train tab trains a visitor's own model (`lmdemo.web.train_tab`).

    Every event that does work is admitted by `gate` (`lmdemo.web.gate`: one fair share per address of every
    line, model work in fair turns, sampling through its decoder). What the page keeps between events (the last
    run, for the bars and the Inside tab) lives `gate.serving.session_ttl_s` after its last use.
    """
    gate = gate or Gate()
    demo = Demo(models, limits, gate.decoder)

    with gr.Blocks(title="LSTM language models") as app:
        run = gr.State(None, time_to_live=gate.serving.session_ttl_s)
        gr.Markdown(INTRO)
        if models.skipped:
            gr.Markdown(skipped_markdown(models.skipped), elem_id="skipped-models")
        opened = {tab: gr.State(None, time_to_live=gate.serving.session_ttl_s) for tab in links.LINKS}
        with gr.Tabs(overflow_behavior="wrap") as tabs:  # every tab in sight on a phone, none behind a "⋯" menu
            with gr.Tab("Sample", id="sample"):
                sample = sample_tab.build(models, limits, run)
            with gr.Tab("Inside the LSTM", id="inside"):
                inside = Inside(models, limits)
                gate.pages.also_forget(inside.internals.forget_idle)
                inside_text, inside_layer = inside_tab.build(inside, run, sample.model, sample.prompt, gate, tabs,
                                                             opened["inside"])
            with gr.Tab("Compare", id="compare"):
                compare_pickers = compare_tab.build(demo, gate, tabs, opened["compare"])
            if training is not None:
                with gr.Tab("Train", id="train"):
                    connect_training = train_tab.build(training, gate)
            with gr.Tab("Training curves", id="curves"):
                curve_picker = curves_tab.build(models)
        build_why_api(models, limits, gate)
        if training is not None:
            connect_training(app, [sample.model, *compare_pickers, curve_picker])
        sample_tab.connect(sample, demo, inside_text, inside_layer, gate, tabs, opened["sample"])
        links.connect_opening(app, models, limits, opened)
    gate.start(app)
    return app


def skipped_markdown(skipped: dict[str, str]) -> str:
    """The page's notice about models that are not served, one line each with its reason."""
    lines = [f"- `{name}`: {reason}" for name, reason in skipped.items()]
    return ("**Not served** (could not be loaded; the other models work):\n" + "\n".join(lines))


def theme() -> Any:
    """The page's colours and fonts."""
    return gr.themes.Soft(primary_hue="indigo", font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "SFMono-Regular", "monospace"])
