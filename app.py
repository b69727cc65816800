"""Web demo: sample LSTM language models side by side at several temperatures and look inside.

    python app.py                                   # every model folder under checkpoints/
    python app.py --model runs/my-model --port 7861 # add a local folder or a Hub repo id

A thin Gradio layer over `lmdemo.registry` (the models), `lmdemo.forms` (form values), `lmdemo.demo`
and `lmdemo.inside` (the requests) and `lmdemo.render` (HTML and figures).
"""

from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no usage reports or version checks: nothing phones home
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402
import torch  # noqa: E402

from lmdemo import render  # noqa: E402
from lmdemo.checkpoint import ModelLoadError  # noqa: E402
from lmdemo.demo import DEFAULT_BARS, DEFAULT_TEMPERATURES, Demo, Progress  # noqa: E402
from lmdemo.forms import FIELD_CHARS, Limits, draw_seed, read_sampling  # noqa: E402
from lmdemo.generation import SettingsError  # noqa: E402
from lmdemo.inside import UNIT_SORTS, Inside, UnitView  # noqa: E402
from lmdemo.internals import QUANTITIES  # noqa: E402
from lmdemo.registry import MODELS_ENV, MODELS_FILE, Models, NoModelsError, discover_models  # noqa: E402
from lmdemo import curves  # noqa: E402
from lmdemo.web import train_tab  # noqa: E402
from lmdemo.web.compute import ComputeSlots  # noqa: E402
from lmdemo.web.jobs import LiveTraining  # noqa: E402
from lmdemo.web.train_requests import TrainLimits  # noqa: E402

ROOT = Path(__file__).resolve().parent
DEFAULT_MAX_NEW_TOKENS = 200
DEFAULT_UNITS = 32
COMPARE_TEMPERATURES = "0.5, 1"
MODEL_QUEUE = "model"  # the one concurrency group of every event that runs a model

INTRO = """# LSTM language models, up close
Pick a model, give it a prompt and compare what it writes at several **temperatures** side by side.
Each token is shaded by how likely the model thought it was; the bars below show what it weighed up at any point."""

TEMPERATURE_HELP = """**Temperature** reshapes the model's odds before each token is drawn. **0** always
takes the likeliest token (greedy: safe, repetitive); below 1 favours likely tokens; **1** samples the model
as trained; above 1 gives rare tokens more room, until the text turns to gibberish. **Top-k** keeps the k
likeliest tokens, **top-p** the fewest holding p of the probability. All columns share one set of random
numbers, so they differ by temperature, not luck."""


INSIDE_HELP = """What the model holds after reading each token of the **Sample** tab's text: rows are units of one
layer, columns are tokens. **h** is what a layer passes on (to the layer above, or to the prediction), **c** is its
memory; the **input**, **forget** and **output** gates (0 = shut, 1 = open) say how much it writes, keeps and shows,
and the **cell candidate g** is what it would write. Rank the units to find the busy ones, or mark a span of token
positions to find units that are high on it and low elsewhere."""

SPAN_HELP = """**Find units for a pattern** (after LSTMVis): give the first and last token positions of a span (the
small numbers above the text; hover a token for its own). Units are ranked by *(mean inside − mean outside) ÷ the
unit's standard deviation over the shown text*: how many of its own spreads it sits higher on the span. A perfect
on/off unit scores about 1/√(p(1−p)) for a span that is a share p of the text, so 4.4 for 5 %; 0 means no
preference."""

COMPARE_HELP = """The same prompt, settings and seed through two models, side by side: their samples, how surprised
each was by the prompt, and what each expects right after it. Models that cut text into different tokens
(characters, words, subwords) are compared in **bits per character** of the text: the table under the button
puts both models' figures side by side."""


def build_app(models: Models, limits: Limits = Limits(), concurrency: int = 2,
              training: LiveTraining | None = None, behind_proxy: bool = False) -> gr.Blocks:
    """The page: a sampling tab (controls on the right, samples below, next-token bars at the bottom),
    a look inside the LSTM at the sampling tab's text, and two models compared on one request.

    Every event that runs a model joins one concurrency group of `concurrency` slots, whichever tab
    or endpoint it comes from, and takes one of as many `ComputeSlots` (which the Train tab's samples take
    too), so `--concurrency` bounds the model computations at once. With `training`, a Train tab trains a
    visitor's own model (`lmdemo.web.train_tab`); the Training curves tab is always there.
    """
    demo, first = Demo(models, limits), models.default
    slots = ComputeSlots(concurrency)
    heavy = dict(concurrency_id=MODEL_QUEUE, concurrency_limit=concurrency)

    with gr.Blocks(title="LSTM language models") as app:
        run = gr.State(None)
        gr.Markdown(INTRO)
        if models.skipped:
            gr.Markdown(skipped_markdown(models.skipped), elem_id="skipped-models")
        with gr.Tabs():
            with gr.Tab("Sample", id="sample"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3):
                        model = gr.Dropdown(models.names, value=first, label="Model",
                                            interactive=len(models.names) > 1)
                        model_info = gr.Markdown(render.model_markdown(models.describe(first)), label="Model card")
                        prompt = gr.Textbox(value=models.examples(first)[0], label="Prompt", lines=4, max_lines=14,
                                            max_length=limits.max_prompt_chars,
                                            placeholder="Leave empty to start from the beginning of a text")
                        examples = gr.Dataset(components=[prompt], samples=[[e] for e in models.examples(first)],
                                              label="Example prompts")
                        with gr.Row():
                            generate = gr.Button("Generate", variant="primary", scale=3)
                            stop = gr.Button("Stop", variant="secondary", scale=1)
                        status = gr.Markdown("Press **Generate** to sample.", label="Status")
                    with gr.Column(scale=2):
                        temperatures = gr.Textbox(
                            ", ".join(f"{t:g}" for t in DEFAULT_TEMPERATURES),
                            label=f"Temperatures: one column each, up to {limits.max_temperatures}",
                            info="numbers from 0 (greedy) up, separated by commas", max_length=FIELD_CHARS)
                        gr.Markdown(TEMPERATURE_HELP, elem_classes="lm-help")
                        max_new_tokens = gr.Slider(1, limits.max_new_tokens, step=1, label="Max new tokens",
                                                   value=min(DEFAULT_MAX_NEW_TOKENS, limits.max_new_tokens))
                        with gr.Row():
                            top_k = gr.Number(0, label="Top-k (0 = off)", precision=0, minimum=0)
                            top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.01, label="Top-p (1 = off)")
                        with gr.Row(equal_height=True):
                            seed = gr.Textbox("0", label="Seed", info="same seed + settings = same text", scale=2,
                                              max_length=FIELD_CHARS)
                            dice = gr.Button("Random seed", scale=1)
                        with gr.Row():
                            stop_text = gr.Textbox("", label="Stop at (optional)", placeholder="e.g. a blank line",
                                                   info="a sample ends once it contains this text",
                                                   max_length=FIELD_CHARS)
                            avoid_unk = gr.Checkbox(False, **_unk_choice(models, first))
                gr.Markdown("### Samples")
                samples = gr.HTML(render.NO_SAMPLES, label="Samples", elem_id="samples")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=2):
                        gr.Markdown("### How surprised was the model by the prompt?")
                        prompt_view = gr.HTML(
                            '<div class="lm-empty">The prompt, coloured by surprisal, appears here.</div>',
                            label="Prompt surprisal")
                    with gr.Column(scale=3):
                        gr.Markdown("### What might come next?")
                        with gr.Row():
                            which = gr.Dropdown([], label="Sample", info="pick a column", scale=1)
                            position = gr.Slider(0, DEFAULT_MAX_NEW_TOKENS, value=0, step=1,
                                                 label="Position in the sample", scale=2,
                                                 info="tokens already written; 0 = right after the prompt")
                            bars = gr.Slider(3, limits.max_bars, value=DEFAULT_BARS, step=1, label="Bars", scale=1)
                        plot = gr.Plot(label="Next-token probabilities", show_label=False)
            with gr.Tab("Inside the LSTM", id="inside"):
                inside_text, inside_layer = _inside_tab(Inside(models, limits), run, model, prompt, heavy, slots)
            with gr.Tab("Compare", id="compare"):
                compare_pickers = _compare_tab(demo, heavy, slots)
            if training is not None:
                with gr.Tab("Train", id="train"):
                    connect_training = train_tab.build(training, slots, behind_proxy)
            with gr.Tab("Training curves", id="curves"):
                curve_picker = _curves_tab(models)
        if training is not None:
            connect_training(app, [model, *compare_pickers, curve_picker])

        def on_model(name: str) -> tuple[str, Any, str]:
            try:
                shown, info = models.examples(name), models.describe(name)
            except SettingsError as error:
                raise gr.Error(str(error), title="Unknown model") from None
            return render.model_markdown(info), gr.Dataset(samples=[[e] for e in shown]), shown[0]

        def on_generate(name: str, prompt_text: str, temperature_text: str, max_new: Any, k: Any, p: Any,
                        seed_text: Any, stop_at: str, no_unk: bool) -> Iterator[tuple]:
            try:
                sampling = read_sampling(limits, temperature_text, max_new, k, p, seed_text, stop_at, no_unk)
                progress_stream = demo.generate(name, prompt_text, sampling)
                first_update = True
                for progress in progress_stream:
                    if first_update:
                        for note in progress.prompt.notes:
                            gr.Warning(note)
                    prompt_update = render.prompt_html(progress) if first_update or progress.done else gr.skip()
                    first_update = False
                    if not progress.done:
                        yield (render.samples_html(progress), prompt_update, render.status_markdown(progress),
                               gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip())
                        continue
                    longest = max(len(s.ids) for s in progress.samples)
                    choices = [(f"T = {s.temperature:g}", i) for i, s in enumerate(progress.samples)]
                    figure = _figure(demo, progress, 0, 0, DEFAULT_BARS)
                    yield (render.samples_html(progress), prompt_update, render.status_markdown(progress), progress,
                           gr.Dropdown(choices=choices, value=0), gr.Slider(maximum=max(1, longest), value=0), figure,
                           _text_choices(progress))
            except SettingsError as error:
                raise gr.Error(str(error), title="Check the settings") from None

        def on_explore(current: Progress | None, index: Any, at: Any, count: Any) -> Any:
            if current is None:
                raise gr.Error("Generate some text first: the bars explain a sample's next tokens.",
                               title="Nothing to explain yet")
            try:
                return _figure(demo, current, index, at, count)
            except SettingsError as error:
                raise gr.Error(str(error), title="Check the settings") from None

        model.change(on_model, model, [model_info, examples, prompt], api_name="model_info")
        model.change(lambda name: gr.Dropdown(**_layer_choices(models, name)), model, inside_layer,
                     api_visibility="private")
        model.change(lambda name: gr.Checkbox(**_unk_choice(models, name)), model, avoid_unk, api_visibility="private")
        examples.click(lambda chosen: chosen[0], examples, prompt, api_visibility="private")
        dice.click(lambda: str(draw_seed()), None, seed, api_name="random_seed")
        generation = generate.click(
            slots.guard(on_generate), [model, prompt, temperatures, max_new_tokens, top_k, top_p, seed, stop_text, avoid_unk],
            [samples, prompt_view, status, run, which, position, plot, inside_text], api_name="generate",
            preprocess=False, **heavy)  # raw values: lmdemo checks them and names the field in its message
        stop.click(None, None, None, cancels=[generation], api_visibility="private")
        explore_inputs = [run, which, position, bars]
        explore = slots.guard(on_explore)
        which.input(explore, explore_inputs, plot, api_name="next_tokens", **heavy)
        position.release(explore, explore_inputs, plot, api_visibility="private", **heavy)
        bars.release(explore, explore_inputs, plot, api_visibility="private", **heavy)
    return app


def skipped_markdown(skipped: dict[str, str]) -> str:
    """The page's notice about models that are not served, one line each with its reason."""
    lines = [f"- `{name}`: {reason}" for name, reason in skipped.items()]
    return ("**Not served** (could not be loaded; the other models work):\n" + "\n".join(lines))


def _inside_tab(inside: Inside, run: gr.State, model: gr.Dropdown, prompt: gr.Textbox, heavy: dict[str, Any],
                slots: ComputeSlots) -> tuple[gr.Dropdown, gr.Dropdown]:
    """Units x tokens of the sampling tab's text: ranked, traced, or found by a marked span.

    Returns the text and layer pickers, which the sampling tab updates after a run or a model change.
    """
    limits = inside.limits
    gr.Markdown(INSIDE_HELP, elem_classes="lm-help")
    with gr.Row():
        text = gr.Dropdown([("the prompt", 0)], value=0, label="Text", scale=2,
                           info="the Sample tab's model and prompt, or the prompt and one of its samples")
        layer = gr.Dropdown(label="Layer", **_layer_choices(inside.models, inside.models.default))
        quantity = gr.Dropdown([(label, key) for key, label in QUANTITIES.items()], value="h", label="Show")
    with gr.Row():
        sort = gr.Dropdown([(label, key) for key, label in UNIT_SORTS.items()], value="variable", label="Units")
        count = gr.Slider(1, limits.max_units, value=min(DEFAULT_UNITS, limits.max_units), step=1,
                          label=f"How many units (up to {limits.max_units})")
        # text boxes, not numbers: a browser shows an empty gr.Number as 0, and empty means "the default" here
        at = gr.Textbox("", label="Change at position", info="for “largest change”; empty = the last token",
                        max_length=FIELD_CHARS)
        unit = gr.Textbox("", label="Unit to trace", info="empty = the top-ranked unit", max_length=FIELD_CHARS)
    show = gr.Button("Show units", variant="primary")
    gr.Markdown(SPAN_HELP, elem_classes="lm-help")
    with gr.Row(equal_height=False):
        first = gr.Textbox("", label="Span from position", placeholder="e.g. 22", max_length=FIELD_CHARS)
        last = gr.Textbox("", label="to position (inclusive)", placeholder="e.g. 28", max_length=FIELD_CHARS)
        find = gr.Button("Find units", variant="secondary")
    status = gr.Markdown(f"Press **Show units**. At most the last {limits.max_inside_tokens} tokens of a text and "
                         f"{limits.max_units} units are drawn.")
    positions = gr.HTML('<div class="lm-empty">The text, with token positions, appears here.</div>')
    heatmap = gr.Plot(show_label=False, elem_id="inside-heatmap")
    with gr.Row(equal_height=False):
        table = gr.Dataframe(label="Ranked units", interactive=False, scale=2)
        trace = gr.Plot(show_label=False, scale=3)

    def shown(view: UnitView) -> tuple:
        return (render.inside_markdown(view), render.positions_html(view), render.unit_heatmap(view),
                render.unit_table(view), render.unit_trace(view))

    def on_show(current: Progress | None, name: str, prompt_text: str, choice: Any, layer_number: Any, what: str,
                order: str, how_many: Any, at_position: Any, traced: Any) -> tuple:
        try:
            chosen = inside.text(current, name, prompt_text, choice)
            return shown(inside.units(chosen, layer_number, what, order, how_many, at_position, traced))
        except SettingsError as error:
            raise gr.Error(str(error), title="Check the settings") from None

    def on_find(current: Progress | None, name: str, prompt_text: str, choice: Any, layer_number: Any, what: str,
                start: Any, end: Any, how_many: Any, traced: Any) -> tuple:
        try:
            chosen = inside.text(current, name, prompt_text, choice)
            return shown(inside.find_span(chosen, layer_number, what, start, end, how_many, traced))
        except SettingsError as error:
            raise gr.Error(str(error), title="Check the span") from None

    reading = [run, model, prompt, text, layer, quantity]
    outputs = [status, positions, heatmap, table, trace]
    show.click(slots.guard(on_show), [*reading, sort, count, at, unit], outputs, api_name="inside", **heavy)
    find.click(slots.guard(on_find), [*reading, first, last, count, unit], outputs, api_name="find_units", **heavy)
    return text, layer


def _compare_tab(demo: Demo, heavy: dict[str, Any], slots: ComputeSlots) -> list[gr.Dropdown]:
    """Two model pickers, one prompt and one set of settings; both models' results side by side.

    Returns the pickers, whose choices a session's own trained models join."""
    models, limits = demo.models, demo.limits
    names, (first, second) = models.names, models.compare_pair
    gr.Markdown(COMPARE_HELP, elem_classes="lm-help")
    with gr.Row():
        pickers = [gr.Dropdown(names, value=first, label="Model A"), gr.Dropdown(names, value=second, label="Model B")]
    prompt = gr.Textbox(models.examples(first)[0], label="Prompt", lines=3, max_lines=10,
                        max_length=limits.max_prompt_chars)
    with gr.Row():
        temperatures = gr.Textbox(COMPARE_TEMPERATURES, label=f"Temperatures (up to {limits.max_temperatures})",
                                  max_length=FIELD_CHARS)
        max_new_tokens = gr.Slider(1, limits.max_new_tokens, value=min(DEFAULT_MAX_NEW_TOKENS, limits.max_new_tokens),
                                   step=1, label="Max new tokens")
        top_k = gr.Number(0, label="Top-k (0 = off)", precision=0)
        top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.01, label="Top-p (1 = off)")
        seed = gr.Textbox("0", label="Seed", max_length=FIELD_CHARS)
    button = gr.Button("Compare", variant="primary")
    status = gr.Markdown("Press **Compare** to run both models.")
    sides = []
    with gr.Row(equal_height=False):
        for picker in pickers:
            with gr.Column():
                card = gr.Markdown(render.model_markdown(models.describe(picker.value)))
                sides.append([card, gr.HTML(), gr.HTML(),
                              gr.Plot(show_label=False)])
                picker.change(lambda name: render.model_markdown(models.describe(name)), picker, card,
                              api_visibility="private")

    def on_compare(name_a: str, name_b: str, prompt_text: str, temperature_text: str, max_new: Any, k: Any, p: Any,
                   seed_text: Any) -> tuple:
        try:
            sampling = read_sampling(limits, temperature_text, max_new, k, p, seed_text)
            comparison = demo.compare([name_a, name_b], prompt_text, sampling)
        except SettingsError as error:
            raise gr.Error(str(error), title="Check the settings") from None
        results = []
        for progress, next_tokens, info in zip(comparison.runs, comparison.next_tokens, comparison.infos):
            results += [render.model_markdown(info), render.samples_html(progress), render.prompt_html(progress),
                        render.next_token_figure(next_tokens)]
        return (render.compare_markdown(comparison), *results)

    button.click(slots.guard(on_compare), [*pickers, prompt, temperatures, max_new_tokens, top_k, top_p, seed],
                 [status, *sides[0], *sides[1]], api_name="compare",
                 preprocess=False, **heavy)  # raw values: lmdemo checks them and names the field in its message
    return pickers


CURVES_HELP = """The training logs (`metrics.jsonl`) of the served models, and of models you trained here, drawn with
the training dashboard's code: the training curve dashed and smoothed (its raw points faint), validation solid, the
test score a star. **Bits per character** compare models whatever they read (characters, words, subwords)."""


def _curves_tab(models: Models) -> gr.Dropdown:
    """The served models' training curves (and the session's own models'), drawn by `lmdemo.curves` from their
    logs as the dashboard draws them; returns the model picker, which a session's trained models join."""
    gr.Markdown(CURVES_HELP, elem_classes="lm-help")
    names = models.names
    chosen_at_start = names[:curves.MAX_CURVES]
    with gr.Row(equal_height=False):
        chosen = gr.Dropdown([(n, n) for n in names], value=chosen_at_start, multiselect=True, label="Models",
                             max_choices=curves.MAX_CURVES, scale=3)
        measure = gr.Radio([(label, key) for key, label in curves.MEASURES.items()], value="bpc", label="Measure",
                           scale=2)
    with gr.Row(equal_height=False):
        x_axis = gr.Radio([(label, key) for key, label in curves.X_AXES.items()], value="step", label="Against",
                          scale=3)
        log_y = gr.Radio(["log", "linear"], value="log", label="Scale", scale=1)
        weight = gr.Slider(0.0, 0.99, value=0.6, step=0.01, label="Smoothing", scale=2,
                           info="of the training curve, as TensorBoard's; its raw points stay visible")
    figure, notes = curves.models_figure(models, chosen_at_start, "bpc", "step", "log", 0.6)
    note = gr.Markdown(notes)
    plot = gr.Plot(figure, show_label=False, elem_id="curves-plot")

    def on_draw(names_value: Any, measure_value: Any, x_value: Any, log_value: Any, weight_value: Any) -> tuple:
        try:
            return curves.models_figure(models, names_value, measure_value, x_value, log_value, weight_value)
        except ValueError as error:
            raise gr.Error(str(error), title="Check the chart settings") from None

    gr.on([chosen.change, measure.change, x_axis.change, log_y.change, weight.release], on_draw,
          [chosen, measure, x_axis, log_y, weight], [plot, note], api_name="curves",
          preprocess=False)  # raw values: a session's own model is found by name, and lmdemo checks the rest
    return chosen


def _layer_choices(models: Models, name: str) -> dict[str, Any]:
    """The layer picker's choices for a model, the top layer chosen."""
    layers = models.describe(name).num_layers
    names = {1: " (bottom)", layers: " (top)"} if layers > 1 else {}
    return dict(choices=[(f"{n}{names.get(n, '')}", n) for n in range(1, layers + 1)], value=layers)


def _unk_choice(models: Models, name: str) -> dict[str, Any]:
    """The "never sample <unk>" box: only a model with an `<unk>` token can sample one."""
    has_unk = models.describe(name).has_unk
    return dict(label="Never sample <unk>" if has_unk else "Never sample <unk> (this model has none)",
                interactive=has_unk)


def _text_choices(progress: Progress) -> Any:
    """The inside tab's text picker after a run: the prompt alone or with one of the run's samples."""
    choices = [("the prompt", 0)] + [(f"the prompt + sample at T = {s.temperature:g}", i)
                                     for i, s in enumerate(progress.samples, 1)]
    return gr.Dropdown(choices=choices, value=1)


def _figure(demo: Demo, progress: Progress, index: Any, at: Any, count: Any) -> Any:
    explained = demo.next_tokens(progress, index, at, count)
    return render.next_token_figure(explained)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python app.py", description="Serve the LSTM language-model demo (Gradio).",
        epilog=f"Models: every folder with config.json under --checkpoints, then the lines of --models-file, then "
               f"each --model, then the comma-separated {MODELS_ENV} environment variable. A model is a local folder "
               f"written by `python -m lmdemo train` or a Hugging Face Hub repo id (HF_HUB_OFFLINE=1 uses the local "
               f"cache only). A model that cannot be loaded is skipped with a warning; none loading is an error.")
    parser.add_argument("--model", action="append", default=[], metavar="FOLDER_OR_REPO",
                        help="also serve this model folder or Hub repo id (repeatable)")
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints",
                        help="folder of shipped model folders (default: checkpoints/ beside app.py)")
    parser.add_argument("--models-file", type=Path, default=ROOT / MODELS_FILE,
                        help=f"file listing models, one folder or Hub repo id a line (default: {MODELS_FILE} beside "
                             f"app.py, which a Space made by `python -m lmdemo space` has)")
    on_space = os.environ.get("SYSTEM") == "spaces"  # what Hugging Face Spaces set, as gradio checks
    host = os.environ.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if on_space else "127.0.0.1")
    parser.add_argument("--host", default=host,
                        help="interface to listen on; 0.0.0.0 for all (default: $GRADIO_SERVER_NAME, else 0.0.0.0 "
                             "on a Hugging Face Space, else 127.0.0.1)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                        help="port (default: $GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--concurrency", type=int, default=2,
                        help="requests computed at once, over all endpoints that run a model (default: 2)")
    parser.add_argument("--queue-size", type=int, default=32,
                        help="requests waiting at most; more are turned away (default: 32)")
    parser.add_argument("--threads", type=int, help="torch threads per request (default: CPU cores / concurrency)")
    parser.add_argument("--max-new-tokens", type=int, default=Limits.max_new_tokens,
                        help=f"most new tokens a request may ask for (default: {Limits.max_new_tokens})")
    parser.add_argument("--max-prompt-tokens", type=int, default=Limits.max_prompt_tokens,
                        help=f"longer prompts keep their last this-many tokens (default: {Limits.max_prompt_tokens})")
    parser.add_argument("--max-prompt-chars", type=int, default=Limits.max_prompt_chars,
                        help=f"longer prompts are refused with a message (default: {Limits.max_prompt_chars})")
    _train_options(parser)
    args = parser.parse_args(argv)
    for name in ("port", "concurrency", "queue_size", "threads", "max_new_tokens", "max_prompt_tokens",
                 "max_prompt_chars"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive (got {value})")
    _check_train_options(parser, args)
    return args


TRAIN_SECONDS_ENV, NO_TRAIN_ENV, PROXY_ENV = "LMDEMO_TRAIN_SECONDS", "LMDEMO_NO_TRAIN", "LMDEMO_BEHIND_PROXY"


def _train_options(parser: argparse.ArgumentParser) -> None:
    """The Train tab's switches: the operator's caps and where runs live (a Space sets them through the environment)."""
    group = parser.add_argument_group("training in the app (the Train tab)")
    group.add_argument("--no-train", action="store_true", default=os.environ.get(NO_TRAIN_ENV, "") not in ("", "0"),
                       help=f"no Train tab: visitors cannot train models on this server (or set {NO_TRAIN_ENV}=1)")
    group.add_argument("--train-seconds", type=float,
                       default=os.environ.get(TRAIN_SECONDS_ENV) or TrainLimits.max_seconds,  # text: checked
                       help=f"the most seconds a visitor's training job may ask for (default: ${TRAIN_SECONDS_ENV} or "
                            f"{TrainLimits.max_seconds:g}); the page offers {TrainLimits.default_seconds:g} s")
    group.add_argument("--train-queue", type=int, default=TrainLimits.max_waiting,
                       help=f"training jobs that may wait for the one training slot; 0: a job runs only when the slot "
                            f"is free (default: {TrainLimits.max_waiting})")
    group.add_argument("--train-budget-per-hour", type=float, default=TrainLimits.budget_per_hour_s, metavar="SECONDS",
                       help=f"seconds of training one client address may take in any hour "
                            f"(default: {TrainLimits.budget_per_hour_s:g})")
    group.add_argument("--train-disk-mb", type=float, default=TrainLimits.disk_mb, metavar="MB",
                       help=f"the most the training folder may hold, texts, models and zips of every session; a job "
                            f"that could pass it is refused (default: {TrainLimits.disk_mb:g})")
    group.add_argument("--session-ttl", type=float, default=TrainLimits.session_ttl_s, metavar="SECONDS",
                       help=f"a session without a request or heartbeat this long ends: its job stops and its models, "
                            f"zips and uploads are deleted (default: {TrainLimits.session_ttl_s:g})")
    group.add_argument("--train-root", type=Path,
                       help="where the private training folder is made (default: the system's temporary folder); "
                            "it is deleted when the server stops, and a later server deletes it if this one is killed")
    on_space = bool(os.environ.get("SPACE_ID"))
    group.add_argument("--behind-proxy", action="store_true",
                       default=on_space or os.environ.get(PROXY_ENV, "") not in ("", "0"),
                       help=f"a reverse proxy that sets X-Forwarded-For stands in front: per-visitor limits key on the "
                            f"address it saw (default: on when SPACE_ID is set, as on a Hugging Face Space, or "
                            f"{PROXY_ENV}=1); never set it for a server clients reach directly")


def _check_train_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.train_seconds >= TrainLimits.min_seconds:  # also refuses nan
        parser.error(f"--train-seconds must be at least {TrainLimits.min_seconds:g} (got {args.train_seconds:g})")
    if args.train_queue < 0:
        parser.error(f"--train-queue must not be negative (got {args.train_queue})")
    if not args.train_budget_per_hour >= min(args.train_seconds, TrainLimits.default_seconds):
        parser.error(f"--train-budget-per-hour must hold at least one job of the page's default length "
                     f"(got {args.train_budget_per_hour:g})")
    for name in ("train_disk_mb", "session_ttl"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive (got {getattr(args, name):g})")


def _training(args: argparse.Namespace, models: Models) -> LiveTraining | None:
    """The server's training slot and queue, unless --no-train. Gradio's cache (uploads, the zips it serves) is
    made a folder of the training folder's, so it is this server's alone and goes with it."""
    if args.no_train:
        return None
    limits = TrainLimits(max_seconds=args.train_seconds, max_waiting=args.train_queue,
                         default_seconds=min(TrainLimits.default_seconds, args.train_seconds),
                         budget_per_hour_s=args.train_budget_per_hour, disk_mb=args.train_disk_mb,
                         session_ttl_s=args.session_ttl)
    training = LiveTraining(models, limits, args.train_root, cache=os.environ.get("GRADIO_TEMP_DIR") or None)
    os.environ["GRADIO_TEMP_DIR"] = str(training.cache)
    return training


def _stop_on_sigterm() -> None:
    """SIGTERM (a Space restart, `docker stop`) ends the server like Ctrl-C: Gradio closes it, then main cleans up."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // args.concurrency))
    try:
        models = Models(discover_models(args.checkpoints, args.model, models_file=args.models_file), skip_broken=True)
    except (NoModelsError, ModelLoadError) as error:
        print(f"app.py: error: {error}", file=sys.stderr)
        return 2
    for name, reason in models.skipped.items():
        print(f"app.py: warning: skipped {name}: {reason}", file=sys.stderr, flush=True)
    limits = Limits(max_prompt_chars=args.max_prompt_chars, max_prompt_tokens=args.max_prompt_tokens,
                    max_new_tokens=args.max_new_tokens)
    _stop_on_sigterm()
    training = _training(args, models)
    try:
        app = build_app(models, limits, args.concurrency, training, args.behind_proxy)
        app.queue(default_concurrency_limit=args.concurrency, max_size=args.queue_size)
        theme = gr.themes.Soft(primary_hue="indigo", font=["ui-sans-serif", "system-ui", "sans-serif"],
                               font_mono=["ui-monospace", "SFMono-Regular", "monospace"])
        upload_cap = dict(max_file_size=training.limits.max_upload_bytes) if training else {}
        app.launch(server_name=args.host, server_port=args.port, theme=theme, css=render.CSS, ssr_mode=False,
                   footer_links=["api"], **upload_cap)
    except KeyboardInterrupt:
        pass
    finally:
        if training is not None:
            training.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
