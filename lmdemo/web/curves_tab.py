"""The Training curves tab: the served models' training logs (and a session's own models'), drawn with the
dashboard's figure code (`lmdemo.curves`); `models_figure` is the tab's request, on raw form values."""

from __future__ import annotations

import math
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from lmdemo.curves import check_choices, colours_for, curves_figure
from lmdemo.metrics import METRICS_FILE, load_run
from lmdemo.runs import MEASURES, X_AXES, curve_frame, log_notes
from lmdemo.web import render
from lmdemo.web.registry import Models

MAX_CURVES = 8  # models drawn at once by `models_figure`

CURVES_HELP = """The training logs (`metrics.jsonl`) of the served models, and of models you trained here, drawn with
the training dashboard's code: the training curve dashed and smoothed (its raw points faint), validation solid, the
test score a star. **Bits per character** compare models whatever they read (characters, words, subwords)."""


def build(models: Models) -> gr.Dropdown:
    """The served models' training curves (and the session's own models'), drawn by `models_figure` from their
    logs as the dashboard draws them; returns the model picker, which a session's trained models join."""
    gr.Markdown(CURVES_HELP, elem_classes="lm-help")
    names = models.names
    chosen_at_start = names[:MAX_CURVES]
    with gr.Row(equal_height=False):
        chosen = gr.Dropdown([(n, n) for n in names], value=chosen_at_start, multiselect=True, label="Models",
                             max_choices=MAX_CURVES, scale=3)
        measure = gr.Radio([(label, key) for key, label in MEASURES.items()], value="bpc", label="Measure",
                           scale=2)
    with gr.Row(equal_height=False):
        x_axis = gr.Radio([(label, key) for key, label in X_AXES.items()], value="step", label="Against",
                          scale=3)
        log_y = gr.Radio(["log", "linear"], value="log", label="Scale", scale=1)
        weight = gr.Slider(0.0, 0.99, value=0.6, step=0.01, label="Smoothing", scale=2,
                           info="of the training curve, as TensorBoard's; its raw points stay visible")
    figure, notes = models_figure(models, chosen_at_start, "bpc", "step", "log", 0.6)
    note = gr.Markdown(notes)
    plot = gr.Plot(figure, show_label=False, elem_id="curves-plot")

    def on_draw(names_value: Any, measure_value: Any, x_value: Any, log_value: Any, weight_value: Any) -> tuple:
        try:
            return models_figure(models, names_value, measure_value, x_value, log_value, weight_value)
        except ValueError as error:
            raise render.refused(str(error), "Check the chart settings") from None

    gr.on([chosen.change, measure.change, x_axis.change, log_y.change, weight.release], on_draw,
          [chosen, measure, x_axis, log_y, weight], [plot, note], api_name="curves",
          preprocess=False)  # raw values: a session's own model is found by name, and lmdemo checks the rest
    return chosen



def models_figure(models: Models, names: Any, measure: Any = "bpc", x: Any = "step", log_y: Any = "log",
                  weight: Any = 0.6, limit: int = MAX_CURVES) -> tuple[go.Figure, str]:
    """The curves of served models, by name, from their folders' logs (a session's private models too), and
    notes (Markdown) on what could not be drawn. Values may come raw from a form: each is checked, and a
    `ValueError` says what is wrong."""
    if names is None or names == "":
        names = []
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, (list, tuple)) or not all(isinstance(name, str) and len(name) <= 200 for name in names):
        raise ValueError("models must be a list of model names")
    if len(names) > limit:
        raise ValueError(f"pick at most {limit} models at once (got {len(names)})")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise ValueError(f"smoothing must be a number in [0, 1) (got {str(weight)[:40]!r})")
    check_choices(measure, x, float(weight))
    if log_y not in (True, False, "log", "linear"):
        raise ValueError(f"scale must be log or linear (got {str(log_y)[:40]!r})")
    runs, notes = [], []
    for name in dict.fromkeys(names):
        folder = models.generator(name).trained.folder
        if not (folder / METRICS_FILE).is_file():
            notes.append(f"**{render.escape(name)}** has no training log ({METRICS_FILE}) to draw.")
            continue
        run = load_run(folder, name=name)
        notes += [f"**{render.escape(name)}**: {render.escape(note)}." for note in log_notes(run)]
        runs.append(run)
    frame = curve_frame(runs)
    for run in runs:
        if frame[frame.run == run.name][measure].isna().all():
            notes.append(f"**{render.escape(run.name)}** logs no {MEASURES[measure].lower()} (try another measure).")
    if not names:
        notes.append("Pick one or more models.")
    figure = curves_figure(frame, measure, x, log_y in (True, "log"), float(weight), colours_for(names), 480)
    return figure, "  \n".join(notes)
