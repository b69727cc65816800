"""The Train tab: a thin Gradio layer over `lmdemo.web.jobs` (the line and the sessions), `train_requests`
(what a visitor may ask) and `train_view` (what a job looks like while it trains).

Every event names its visitor twice: the Gradio session (whose models, folders and zips these are) and the
client's address (whose share of the server this is, `lmdemo.web.clients`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from lmdemo import curves
from lmdemo.generation import SettingsError
from lmdemo.web import render, train_view
from lmdemo.web.curves_tab import MAX_CURVES
from lmdemo.web.gate import UNLIMITED, Gate
from lmdemo.web.jobs import Job, TrainingLine
from lmdemo.web.train_requests import (
    CORPORA,
    DEFAULT_LEVEL,
    DEFAULT_SIZE,
    LEVELS,
    SIZES,
    TrainLimits,
    read_request,
    read_source,
)

HEARTBEAT_S = 60.0  # an open page says it is still there this often, so its session outlives --session-ttl

TRAIN_HELP = """Train a small LSTM on a text and watch it learn: the loss curves and, after every validation that
improves it, samples from the best weights so far at two temperatures with one fixed seed, so what changes from one
update to the next is the learning, not luck. The best weights are what **Stop** keeps and **Download** gives you.
One training job runs at a time on this server, with one CPU thread so sampling stays quick; others wait in line
and see their place. When training ends, your model joins the **Sample**, **Inside** and **Compare** pickers and
the **Training curves** tab, for this session only. Your text is deleted from the server once the trainer has read
it; leaving the page stops your job and deletes your models and downloads."""


def build(training: TrainingLine, gate: Gate) -> Callable[[gr.Blocks, list], None]:
    """Text (a bundled corpus, pasted, or an uploaded .txt), level, size and time budget; Train streams the
    curves, samples and status of a job of `training`, Stop ends it keeping the best model, Download zips it.

    Returns `connect(app, pickers)`, which wires the events once the model pickers a finished model joins exist
    (Sample, Compare A and B, Training curves). `/train` (text, level, size, seconds) streams the same updates
    over the API and ends with the model's name in the session; `/stop_training` stops the session's job.
    """
    training.models.set_visitor(lambda: _visitor(training))  # a session's trained models answer that session only
    (source, about, text, upload, level, size, seconds, train, stop, stopped, status, curve, samples, name, download,
     points, api_train, heartbeat) = _layout(training.limits)

    def connect(app: gr.Blocks, pickers: list[gr.Dropdown]) -> None:
        events = TrainEvents(training, gate, len(pickers))
        # the training line admits jobs itself (one per address); the watching event holds a place like any other;
        # it reads the curves drawn (the last picker) to add the new model to them
        train.click(gate.event(events.on_train), [source, text, upload, level, size, seconds, pickers[-1]],
                    [status, curve, samples, name, train, download, *pickers], api_visibility="private", **UNLIMITED)
        api_train.click(gate.event(events.on_api_train), [text, level, size, seconds],
                        [status, curve, points, samples, name], api_name="train",
                        preprocess=False, **UNLIMITED)  # raw values: lmdemo checks them and says what is wrong
        stop.click(events.on_stop, None, stopped, api_name="stop_training", **UNLIMITED)
        bookkeeping = dict(api_visibility="private", **UNLIMITED)  # no model, no line: answered at once
        upload.upload(events.on_upload, upload, None, **bookkeeping)
        heartbeat.tick(events.on_heartbeat, None, None, show_progress="hidden", **bookkeeping)
        source.change(events.on_source, source, [about, text, upload], **bookkeeping)
        app.unload(events.on_leave)

    return connect


class TrainEvents:
    """The tab's event handlers over `training` (the line, the sessions, the uploads); `gate` says who asks, and
    `pickers` model pickers (Sample, Compare A and B, Training curves) take a finished model."""

    def __init__(self, training: TrainingLine, gate: Gate, pickers: int):
        self.training, self.gate, self.pickers = training, gate, pickers

    def submit(self, request: gr.Request, source_value: Any, text_value: Any, file: Any, level_value: Any,
               size_value: Any, budget: Any) -> Job:
        """Read, check and queue; the text lives in this call only, then on disk until the trainer has read it."""
        training, limits = self.training, self.training.limits
        owner, client = request.session_hash, self.gate.client(request)
        try:
            if source_value == "upload" and file and not training.uploads.usable(owner, client, file):
                raise SettingsError("that upload is not this page's (or it expired): upload the file again")
            body, source_name = read_source(source_value, text_value, file, limits)
            job = training.submit(owner, client, read_request(body, level_value, size_value, budget, limits,
                                                              source_name))
        except SettingsError as error:
            raise render.refused(str(error), "Check the text and settings") from None
        if source_value == "upload":
            training.uploads.discard(file)
        return job

    def watch(self, job: Job, request: gr.Request) -> Iterator[train_view.TrainUpdate]:
        """`train_view.watch`, its samples drawn as the asking address's sampling requests."""
        client = self.gate.client(request)
        return train_view.watch(self.training, job, compute=lambda: self.gate.compute(client),
                                decoder=self.gate.decoder, client=client)

    def on_api_train(self, text_value: Any, level_value: Any, size_value: Any, budget: Any,
                     request: gr.Request) -> Iterator[tuple]:
        job = self.submit(request, "paste", text_value, None, level_value, size_value, budget)
        del text_value
        for update in self.watch(job, request):
            yield _shown(update)

    def on_train(self, chosen: Any, text_value: Any, file: Any, level_value: Any, size_value: Any, budget: Any,
                 drawn: Any, request: gr.Request) -> Iterator[tuple]:
        owner = request.session_hash
        job = self.submit(request, chosen, text_value, file, level_value, size_value, budget)
        del text_value
        shown_samples = None
        for update in self.watch(job, request):
            status_text, figure, samples_text, model_name = _shown(update, points=False)
            if samples_text == shown_samples:  # the page keeps what it shows: less to send and compare
                samples_text = gr.skip()
            else:
                shown_samples = samples_text
            page = (gr.Button(interactive=update.done, value="Train" if update.done else "Training…"),
                    gr.skip() if update.model is None else gr.DownloadButton(value=str(update.model.archive),
                                                                             interactive=True))
            joined = (gr.skip(),) * self.pickers
            if update.model is not None:  # the pickers, Compare's model A on the new model (mine vs shipped), and the
                new = update.model.name  # new model drawn in Training curves beside what was drawn
                mine = [*self.training.models.names, *(m.name for m in self.training.sessions.models_of(owner))]
                kept = [n for n in (drawn if isinstance(drawn, list) else []) if n in mine and n != new]
                joined = (gr.Dropdown(choices=mine, interactive=True), gr.Dropdown(choices=mine, value=new),
                          gr.Dropdown(choices=mine),
                          gr.Dropdown(choices=mine, value=[*kept[-(MAX_CURVES - 1):], new], multiselect=True))
            yield (status_text, figure, samples_text, model_name, *page, *joined)

    def on_stop(self, request: gr.Request) -> str:
        return self.training.stop(request.session_hash)

    def on_leave(self, request: gr.Request) -> None:
        self.training.end_session(request.session_hash)

    def on_upload(self, file: Any, request: gr.Request) -> None:
        """The page shows its upload: the upload is this session's, which from now on expires like any session."""
        client = self.gate.client(request)
        if self.training.uploads.claim(request.session_hash, client, file):
            self.training.sessions.open(request.session_hash, client)

    def on_heartbeat(self, request: gr.Request) -> None:
        self.training.sessions.touch(request.session_hash)

    def on_source(self, chosen: str) -> tuple:
        return (source_note(chosen, self.training.limits), gr.Textbox(visible=chosen == "paste"),
                gr.File(visible=chosen == "upload"))


def _shown(update: train_view.TrainUpdate, points: bool = True) -> tuple:
    """Status, curve, (the curve points: API only,) samples and the model's name, of one update."""
    figure = gr.skip() if update.frame.empty else curves.curves_figure(
        update.frame, "loss", "time", log_y=False, weight=0.6, height=400, title=train_view.curve_title(update),
        y_title=train_view.loss_unit(update))
    return (train_view.status_markdown(update), figure, *([curves.curve_points(update.frame)] if points else []),
            train_view.samples_html(update), update.model.name if update.model is not None else gr.skip())


def _layout(limits: TrainLimits) -> tuple:
    """The tab's components, top to bottom: the text and the settings, the status, the curve beside the samples,
    the model's name and its download; hidden: the curve points and the API's button, and the page's heartbeat."""
    gr.Markdown(TRAIN_HELP, elem_classes="lm-help")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            sources = [(corpus.title, key) for key, corpus in CORPORA.items()]
            source = gr.Radio([*sources, ("Paste a text", "paste"), ("Upload a .txt file", "upload")],
                              value=sources[0][1], label="Text")
            about = gr.Markdown(source_note(sources[0][1], limits), elem_classes="lm-note")
            text = gr.Textbox("", label="Your text", lines=8, max_lines=16, max_length=limits.max_chars,
                              visible=False, placeholder="Paste a text: a few pages at least")
            upload = gr.File(label="A UTF-8 .txt file", file_types=[".txt"], type="filepath", visible=False,
                             elem_id="train-upload")
        with gr.Column(scale=2):
            level = gr.Radio([(label, key) for key, label in LEVELS.items()], value=DEFAULT_LEVEL,
                             label="Level: what one token is")
            size = gr.Radio([(size.label, key) for key, size in SIZES.items()], value=DEFAULT_SIZE,
                            label="Model size (layers × units)")
            seconds = gr.Slider(min(limits.min_seconds, limits.max_seconds - 1), limits.max_seconds,
                                value=limits.default_seconds, interactive=limits.max_seconds > limits.min_seconds,
                                step=5 if limits.max_seconds - limits.min_seconds >= 50 else 1,
                                label="Time budget (seconds)",
                                info=f"at most {limits.max_seconds:g} s a job and {limits.budget_per_hour_s:g} s an "
                                     f"hour for each visitor on this server")
            with gr.Row():
                train = gr.Button("Train", variant="primary", scale=3, elem_id="train-button")
                stop = gr.Button("Stop", variant="secondary", scale=1, elem_id="train-stop")
            stopped = gr.Markdown("")
    status = gr.Markdown("Pick a text and press **Train**.", elem_id="train-status")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            curve = gr.Plot(show_label=False, elem_id="train-curve")
        with gr.Column(scale=1):
            samples = gr.HTML('<div class="lm-empty">Samples from the model appear here as it learns.</div>',
                              elem_id="train-samples")
    with gr.Row(equal_height=True):
        name = gr.Textbox("", label="Your model", interactive=False, max_length=200, scale=3,
                          info="its name in the pickers and the API (this session only)")
        download = gr.DownloadButton("Download the model (zip)", interactive=False, scale=1)
    points = gr.JSON(visible=False)  # the curve points, for API callers
    api_train = gr.Button(visible=False)  # /train: the API's way in, with the text itself
    heartbeat = gr.Timer(HEARTBEAT_S)
    return (source, about, text, upload, level, size, seconds, train, stop, stopped, status, curve, samples, name,
            download, points, api_train, heartbeat)


def _visitor(training: TrainingLine) -> str | None:
    """The session of the request being handled (Gradio keeps the request in a context variable for every event);
    using a session's own model is a request of that session."""
    from gradio.context import LocalContext

    owner = getattr(LocalContext.request.get(None), "session_hash", None)
    training.sessions.touch(owner)
    return owner


def source_note(chosen: str, limits: TrainLimits) -> str:
    if chosen in CORPORA:
        return f"{CORPORA[chosen].about}."
    if chosen == "paste":
        return (f"Up to {limits.max_chars:,} characters; long enough for a training batch and a validation part "
                f"(a few thousand characters at least; more is better).")
    return f"A UTF-8 text file of at most {limits.max_upload_bytes / 1e6:g} MB."
