"""The Compare tab: the same prompt, settings and seed through two models, side by side; a thin Gradio layer
over `lmdemo.web.demo` (`Demo.compare`) and `render`. "Copy link" gives a link to the comparison on view, and a page
opened on such a link sets the form and runs it (`lmdemo.web.links`)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from lmdemo.admission import Busy
from lmdemo.generation import SettingsError
from lmdemo.web import links, render
from lmdemo.web.demo import DEFAULT_MAX_NEW_TOKENS, Demo
from lmdemo.web.forms import FIELD_CHARS, read_sampling
from lmdemo.web.gate import UNLIMITED, Gate
from lmdemo.web.links import CompareLink

COMPARE_TEMPERATURES = "0.5, 1"

COMPARE_HELP = """The same prompt, settings and seed through two models, side by side: their samples, how surprised
each was by the prompt, and what each expects right after it. Models that cut text into different tokens
(characters, words, subwords) are compared in **bits per character** of the text: the table under the button
puts both models' figures side by side."""


def build(demo: Demo, gate: Gate, tabs: gr.Tabs, opened: gr.State) -> list[gr.Dropdown]:
    """Two model pickers, one prompt and one set of settings; both models' results side by side. A link the page
    `opened` on (`lmdemo.web.links`) sets the form, shows this tab among `tabs` and starts the same Compare.

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
    copy_link, link = links.copy_widgets("this comparison")
    events = CompareEvents(demo, gate)
    # one row per part (cards, samples, prompts, bars), A beside B, so a longer card on one side pushes both sides
    # down alike; on a phone each row stacks, as columns do (a side is at least 320 px wide)
    side = dict(min_width=320)
    with gr.Row():
        cards = [gr.Markdown(render.model_markdown(models.describe(picker.value)), **side) for picker in pickers]
    with gr.Row():
        samples = [gr.HTML(**side), gr.HTML(**side)]
    with gr.Row():
        prompts = [gr.HTML(**side), gr.HTML(**side)]
    with gr.Row():
        bars = [gr.Plot(show_label=False, **side), gr.Plot(show_label=False, **side)]
    for picker, card in zip(pickers, cards):
        picker.change(events.card, picker, card, api_visibility="private")
    sides = list(zip(cards, samples, prompts, bars))
    form = [*pickers, prompt, temperatures, max_new_tokens, top_k, top_p, seed]
    shown = gr.State(None, time_to_live=gate.serving.session_ttl_s)  # the link of the comparison on view
    start = gr.State(None, time_to_live=gate.serving.session_ttl_s)  # set once the form holds an opened link: it runs it
    opened.change(events.on_opened, opened, [tabs, *form, start], api_visibility="private")
    gr.on([button.click, start.change], gate.sampling(events.on_compare), form, [status, *sides[0], *sides[1], shown],
          api_name="compare", preprocess=False, **UNLIMITED)  # raw values: lmdemo checks them and names the field
    links.connect_copy(copy_link, link, events.link_query, [shown])
    return pickers


class CompareEvents:
    """The tab's event handlers, over `demo`'s requests; `gate` says who asks."""

    def __init__(self, demo: Demo, gate: Gate):
        self.demo, self.gate = demo, gate

    def card(self, name: str) -> str:
        return render.model_markdown(self.demo.models.describe(name))

    def on_opened(self, opened: CompareLink | None) -> tuple:
        """The form set to an opened link, the tab in view, and `start` set, which runs it."""
        if opened is None:
            return gr.skip()
        return (gr.Tabs(selected=CompareLink.tab), opened.model_a, opened.model_b, opened.prompt, opened.temperatures,
                opened.max_new_tokens, opened.top_k, opened.top_p, str(opened.seed), opened)

    def link_query(self, shown: CompareLink | None) -> str:
        """"Copy link": the query that reopens the comparison on view."""
        return links.link_query(shown, self.demo.models, self.demo.limits, "Compare first")

    def on_compare(self, request: gr.Request, name_a: str, name_b: str, prompt_text: str, temperature_text: str,
                   max_new: Any, k: Any, p: Any, seed_text: Any) -> tuple:
        try:
            sampling = read_sampling(self.demo.limits, temperature_text, max_new, k, p, seed_text)
            comparison = self.demo.compare([name_a, name_b], prompt_text, sampling, client=self.gate.client(request))
        except SettingsError as error:
            raise render.refused(str(error), "Check the settings") from None
        except Busy as error:
            raise render.refused(str(error), "Busy") from None
        results = []
        for progress, next_tokens, info in zip(comparison.runs, comparison.next_tokens, comparison.infos):
            results += [render.model_markdown(info), render.samples_html(progress, lower_bound_note=False),
                        render.prompt_html(progress),
                        render.plot_value(render.next_token_figure(next_tokens))]
        return (render.compare_markdown(comparison), *results,
                CompareLink.of(name_a, name_b, prompt_text, sampling))
