"""How the demo's results look: surprisal-coloured HTML, Markdown summaries and Plotly figures.

Colours follow GLTR (Gehrmann et al. 2019): each token is shaded by the probability the model
gave it, so predictable stretches read green and surprising ones red. Text is drawn as its readable
pieces (`Tokenizer.pieces`), one span per token. Surprise is given in bits per character of the
text as written (a prompt's own characters, whatever the model re-renders; a sample's text), which
compares models of any tokenisation and agrees with `eval`. Inside the LSTM, values
that can be negative (h, c, the cell candidate) use a red-blue scale centred on 0 and gates
(0 = shut, 1 = open) a sequential one. Everything returns strings, tables or figures; the Gradio
app only places them.

Every text that comes from a model, a tokenizer or a visitor (a prompt, a token, a model's name, a note about the
prompt, an error message that quotes a form value) goes through `escape` on its way into HTML, Markdown, a toast or
a Plotly label, so `<unk>` reads `<unk>` and `*bold*` reads `*bold*` wherever it lands. Why a figure is a lower
bound is written out once per tab, beside the figures it qualifies (Sample's colour key, Compare's table);
elsewhere "a lower bound" keeps the reason in its tooltip (`lower_bound_mark`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import gradio as gr
import pandas as pd
import plotly.graph_objects as go
from gradio.components.plot import PlotData

from lmdemo.curves import TEMPLATE
from lmdemo.generation import Sample
from lmdemo.internals import QUANTITIES, SpanMatch
from lmdemo.metrics import bits, bits_per_character, perplexity
from lmdemo.tokenizer import EOS, LOWER_BOUND, UNK, LevelUnit, level_unit
from lmdemo.web.atlas_view import SENTIMENT, ModelAtlas, UnitReading
from lmdemo.web.demo import Comparison, NextTokens, Progress
from lmdemo.web.inside import UnitView
from lmdemo.web.registry import ModelInfo

# (lower bound of the probability, CSS class, legend label), likeliest first.
BUCKETS = ((0.5, "p-high", "≥ 50 %"), (0.1, "p-mid", "10–50 %"), (0.01, "p-low", "1–10 %"), (0.0, "p-rare", "< 1 %"))
PROMPT_TAIL_CHARS = 80
BAR_COLOUR, CHOSEN_COLOUR = "#9db4d6", "#e8590c"
# whitespace drawn as (one character for axes, a label for bars)
WHITESPACE = {" ": ("·", "␣ (space)"), "\n": ("↵", "↵ (newline)"), "\t": ("⇥", "⇥ (tab)"), EOS: ("↵", "↵ <eos>")}
MAX_TOKEN_LABELS = 150  # a longer window labels every n-th token on the axis; hovering names them all
TITLE_CONTEXT_CHARS = 36  # the end of the text the next-token bars follow, on a title line of its own (a phone's width)
SIGNED_SCALE, GATE_SCALE = "RdBu_r", "Viridis"
MARK_COLOUR = "#e8590c"
NO_SAMPLES = '<div class="lm-empty">Samples appear here.</div>'
NEWLINE = '<span class="nl">↵</span>\n'
# the chosen position at a sample's end: after its last token, where the bars show what would come next
END_MARK = '<span class="lm-chosen lm-end" title="the end of the sample: the bars show what would come next"></span>'
# a unit's value as a background, Karpathy style: blue below 0, red above, as strong as |value| / the largest shown
NEGATIVE_RGB, POSITIVE_RGB, STRONGEST = (33, 102, 172), (202, 0, 32), 0.8
TEMPLATE_JSON = TEMPLATE.to_plotly_json()  # the figures built as plain data take it as is
METRIC_NAMES = {"r": "r", "auc": "AUC", "accuracy": "accuracy"}
# Marks the texts of a finished run whose tokens a click chooses (a row of sample columns, the prompt): a click on
# one of their tokens reaches the component's Python `.select` as `gr.SelectData` with index [column, position], the
# text's place among the marked texts and the token's among its text's, as `samples_html` and `prompt_html` lay them
# out (the mark sits on the texts' container, so each token's span and each text's element stay as other readers of
# this HTML match them). One
# listener on the component's element (a gr.HTML's `js_on_load`), which keeps it when its HTML is replaced; a click
# that ends a selection of text chooses nothing.
CHOOSE = "data-choose"
CHOOSE_TOKEN_JS = """
element.addEventListener('click', (event) => {
    const token = event.target.closest('.tok');
    const text = token && token.closest('.lm-text');
    const texts = text && text.closest('[data-choose]');
    if (!texts || !window.getSelection().isCollapsed) return;
    const column = [...texts.querySelectorAll('.lm-text')].indexOf(text);
    const position = [...text.querySelectorAll('.tok')].indexOf(token);
    trigger('select', {index: [column, position], value: token.textContent});
});
"""
CHOOSABLE_CSS = "[data-choose] .tok { cursor: pointer; }\n[data-choose] .tok:hover { filter: brightness(.9); }"
# each character that HTML, Markdown or a Plotly label reads as markup, as the entity that shows it as written (numeric
# where Plotly knows no name; `'` stays, every attribute here is in double quotes)
LITERAL = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "\\": "&#92;", "`": "&#96;",
                         "*": "&#42;", "_": "&#95;", "[": "&#91;", "]": "&#93;", "|": "&#124;", "~": "&#126;"})

CSS = """
.lm-legend { display: flex; gap: .5rem; align-items: center; flex-wrap: wrap; font-size: .85rem; margin: .2rem 0 .6rem; }
.lm-legend span.tok { padding: 0 .35rem; border-radius: .25rem; color: #1f2933; }
.lm-samples { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(210px, 100%), 1fr)); gap: .75rem; }
/* A sample's column, and the "Why this token?" panel drawn like one (`why_view`; not a column: none of the samples) */
:is(.lm-col, .lm-why) { border: 1px solid #d9dee5; border-radius: .6rem; background: #fff; color: #1f2933;
                        overflow: hidden; }
:is(.lm-col, .lm-why) header { display: flex; justify-content: space-between; align-items: baseline; gap: .4rem;
                               padding: .45rem .7rem; background: #f3f5f8; border-bottom: 1px solid #d9dee5; }
:is(.lm-col, .lm-why) header b { font-size: 1.05rem; white-space: nowrap; }
:is(.lm-col, .lm-why) header small { color: #5b6673; font-size: .78rem; text-align: right; }
.lm-text { padding: .6rem .7rem; white-space: break-spaces; word-break: break-word; line-height: 1.55;
           font-size: .92rem; max-height: 34rem; overflow-y: auto; }
.lm-text.mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .86rem; }
.lm-text .ctx { color: #8a94a1; }
.lm-text .tok { border-radius: .2rem; color: #1f2933; }
.lm-text .nl, .lm-legend .nl { color: #8a94a1; font-size: .75em; }
.p-high { background: #c9f0d1; } .p-mid { background: #fff0a8; }
.p-low { background: #ffd3a3; } .p-rare { background: #ffaaa8; }
/* The position the next-token bars explain: an outline in the bars' colour for the token the sample took there, a
   caret at its end. Drawn outside the token's shading, on the columns' own white, so light or dark page alike. */
.lm-text .lm-chosen { outline: 2px solid #e8590c; outline-offset: 1px; box-decoration-break: clone;
                      -webkit-box-decoration-break: clone; }
.lm-text .lm-end::after { content: "▏"; color: #e8590c; font-weight: bold; }
.lm-prompt { border: 1px solid #d9dee5; border-radius: .6rem; background: #fff; color: #1f2933; }
.lm-prompt header { padding: .4rem .7rem; background: #f3f5f8; border-bottom: 1px solid #d9dee5;
                    font-size: .85rem; color: #5b6673; }
.lm-help { font-size: .88rem; }
.lm-bound { border-bottom: 1px dotted #5b6673; cursor: help; }
.lm-note { color: #5b6673; font-size: .8rem; }
.lm-empty { color: #8a94a1; padding: 1rem; text-align: center; border: 1px dashed #d9dee5; border-radius: .6rem; }
.lm-positions { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .86rem;
                white-space: break-spaces; word-break: break-word; line-height: 1.9; padding: .5rem .7rem;
                border: 1px solid #d9dee5; border-radius: .6rem; background: #fff; color: #1f2933;
                max-height: 12rem; overflow-y: auto; }
.lm-positions sub { color: #8a94a1; font-size: .65rem; margin-right: .1rem; }
.lm-positions .ws { color: #8a94a1; }
.lm-positions .part { display: inline-block; min-width: .4em; border-bottom: 1px dotted #8a94a1; }
.lm-positions .marked { background: #ffe0c7; outline: 1px solid #e8590c; }
.lm-positions span[title]:hover { background: #e7ecf5; }
.lm-atlas-sentence { font-size: 1rem; margin: .2rem 0 .4rem; }
.lm-scale { display: inline-block; width: 9rem; height: .9rem; border: 1px solid #d9dee5; border-radius: .2rem;
            vertical-align: middle; background: linear-gradient(90deg, rgba(33,102,172,.8), #fff, rgba(202,0,32,.8)); }
.lm-unit-texts { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(380px, 100%), 1fr)); gap: .75rem; }
.lm-unit-texts .lm-text { max-height: 22rem; }
.lm-text .holds, .lm-legend .holds { text-decoration: underline 2px #1f2933; text-underline-offset: 3px; }
.lm-caption { margin: 0; padding: .35rem .7rem 0; }
/* A refused request is told in its toast (`refused`); what the outputs showed before stays in view, uncovered. */
[data-testid="status-tracker"]:has(> .error) { display: none !important; }
/* A phone is a screen like any other: the grids above fall to one column (min(…, 100%)) instead of overflowing, text
   wraps its runs of spaces too (break-spaces) instead of hanging them past the edge, a table keeps columns wide enough
   to read and scrolls inside its own box, and Plotly's toolbar, which would cover chart titles where there is no hover
   to hide it, is left out (pinching zooms). */
@media (max-width: 640px) {
  .table-wrap :is([role=gridcell], [role=columnheader]) { min-width: 7em !important; }
  .modebar-container { display: none !important; }
}
"""


def escape(text: str) -> str:
    """`text` (from a model, a tokenizer or a visitor) shown as written wherever the page puts it: in HTML (an
    element or a double-quoted attribute), in Markdown and in a Plotly title, label or hover, none of which then
    reads a tag, an entity, emphasis, code or a table cell's end in it. The one escape of the page; API callers get
    the same texts, so theirs carry the entities too."""
    return text.translate(LITERAL)


def lower_bound_mark() -> str:
    """"a lower bound", with the reason as its tooltip: how a figure that understates is marked where the reason is
    not written out beside it (the model card, the prompt's header)."""
    return f'<span class="lm-bound" title="{escape(LOWER_BOUND)}">a lower bound</span>'


def visible(token: str, compact: bool = False) -> str:
    """A token as a label: whitespace drawn, so a space or newline is not an empty bar (one character if
    `compact`), and spaces inside a token (a subword's leading space) shown as "·" or "␣"."""
    shown = WHITESPACE.get(token)
    if shown is not None:
        return shown[0 if compact else 1]
    return token.replace(" ", "·" if compact else "␣").replace("\n", "↵").replace("\t", "⇥")


def bucket(probability: float) -> str:
    return next(css for floor, css, _ in BUCKETS if probability >= floor)


def legend(lower_bound: bool = False) -> str:
    """The colour key; with `lower_bound`, the note that the bits per character below are a lower bound."""
    chips = "".join(f'<span class="tok {css}">{label}</span>' for _, css, label in BUCKETS)
    note = f' <span class="lm-note">Bits per character are {escape(LOWER_BOUND)}.</span>' if lower_bound else ""
    return f'<div class="lm-legend">probability the model gave each token: {chips}{note}</div>'


def coloured_tokens(pieces: Sequence[str], tokens: Sequence[str], probabilities: Sequence[float],
                    chosen: int | None = None) -> str:
    """Each token's readable piece as a span shaded by its probability, with the raw token, its probability
    and its surprisal as a tooltip; the token at position `chosen` (or the end, past the last) marked."""
    parts = []
    for position, (piece, token, probability) in enumerate(zip(pieces, tokens, probabilities)):
        shown = escape(piece.replace(UNK, "⟨unk⟩") if token == UNK else piece).replace("\n", NEWLINE)
        tooltip = escape(f"{visible(token)}: p = {probability:.1%}, {_surprisal_bits(probability):.1f} bits")
        mark = " lm-chosen" if position == chosen else ""
        parts.append(f'<span class="tok {bucket(probability)}{mark}" title="{tooltip}">{shown}</span>')
    if chosen == len(parts):
        parts.append(END_MARK)
    return "".join(parts)


def samples_html(progress: Progress, lower_bound_note: bool = True, chosen: tuple[int, int] | None = None) -> str:
    """One column per temperature: the end of the prompt as read in grey, then the sample coloured by surprisal.
    With a dial, a second row of columns under the first: the same seed with the dial held. Without
    `lower_bound_note` the colour key leaves out why the figures are lower bounds (Compare: its table says it, once
    for both models, and both models' columns start level). `chosen` (a column of the first row, a position in it)
    marks where the next-token bars are, so the text shows which token they explain. Once the run is done, a click
    can choose a token of the first row (`CHOOSE`); not of the dialled row's, the bars explaining the samples without
    the dial."""
    if not progress.samples:
        return NO_SAMPLES
    rows = _sample_columns(progress, progress.samples, chosen, choosable=progress.done)
    if progress.dial is not None:
        dial = progress.dial
        rows = (f'<h4 class="lm-dial">Dial off</h4>{rows}<h4 class="lm-dial">Dial on: unit {dial.unit} of layer '
                f"{dial.layer}'s {dial.quantity} held at {dial.value:g} (same seed; probabilities with the dial held)"
                f"</h4>{_sample_columns(progress, progress.dialled)}")
    return legend(progress.lower_bound and lower_bound_note) + rows


def _sample_columns(progress: Progress, samples: Sequence[Sample], chosen: tuple[int, int] | None = None,
                    choosable: bool = False) -> str:
    read = progress.prompt.text
    tail = read[-PROMPT_TAIL_CHARS:]
    context = f'<span class="ctx">{"…" if len(read) > len(tail) else ""}{escape(tail)}</span>'
    columns = []
    for column, sample in enumerate(samples):
        position = chosen[1] if chosen is not None and chosen[0] == column else None
        columns.append(
            f'<section class="lm-col"><header><b>T = {sample.temperature:g}</b>'
            f"<small>{_sample_summary(sample, progress.unit, progress.done)}</small></header>"
            f'<div class="{_text_classes(progress)}">{context}'
            f"{coloured_tokens(sample.pieces, sample.tokens, sample.probabilities, position)}</div></section>")
    return f'<div class="lm-samples"{f" {CHOOSE}" if choosable else ""}>{"".join(columns)}</div>'


def prompt_html(progress: Progress, chosen: int | None = None) -> str:
    """The prompt as the model read it, coloured by surprisal, with its bits per character and perplexity; the token
    at position `chosen` marked. Once the run is done, a click can choose a token (`CHOOSE`)."""
    scores = progress.reading.scores
    if not scores:
        return '<div class="lm-empty">Empty prompt: the model started from the beginning of a text.</div>'
    probabilities = [s.probability for s in scores]
    summary = escape(surprisal_summary(probabilities, progress.prompt.characters, progress.unit))
    if progress.lower_bound:
        summary += f" ({lower_bound_mark()})"
    return (f'<div class="lm-prompt"{f" {CHOOSE}" if progress.done else ""}><header>Prompt as the model read it: '
            f'{summary}</header><div class="{_text_classes(progress)}">'
            f"{coloured_tokens(progress.prompt.pieces, [s.token for s in scores], probabilities, chosen)}</div></div>")


def status_markdown(progress: Progress) -> str:
    """One line on where the request stands, plus what had to change in the prompt."""
    made = sum(len(s.ids) for s in [*progress.samples, *progress.dialled])
    rate = made / progress.seconds if progress.seconds > 0 else 0.0
    state = "Done" if progress.done else "Generating…"
    each = ", each also with the dial" if progress.dial is not None else ""
    lines = [f"**{state}** {len(progress.samples)} sample{'s' if len(progress.samples) != 1 else ''}{each}, "
             f"{made:,} tokens in {progress.seconds:.1f} s ({rate:,.0f} tokens/s)"]
    lines += [f"⚠️ {escape(note)}" for note in progress.prompt.notes]
    return "  \n".join(lines)


def model_markdown(info: ModelInfo) -> str:
    """The model card in two lines: shape and data, then measured quality: bits per character of the
    validation and test text when the log has them (older word-level logs do not), else perplexity."""
    quality = []
    splits = (("test", info.test_ppl, info.test_bpc), ("validation", info.validation_ppl, info.validation_bpc))
    for split, ppl, bpc in splits:
        if bpc is not None:
            per_token = f" (perplexity {ppl:,.2f} per token)" if ppl is not None else ""
            quality.append(f"{split} **{bpc:.3f}** bits/char{per_token}")
        elif ppl is not None:
            quality.append(f"{split} perplexity **{ppl:,.1f}** per token")
    measured = " · ".join(quality) if quality else "no validation or test figures logged"
    if info.lower_bound and any(bpc is not None for _, _, bpc in splits):
        measured += f" · bits/char are {lower_bound_mark()}"
    trained = f", {info.steps:,} steps" if info.steps else ""
    if info.metrics_problems:
        measured += f" · ⚠️ metrics log: {len(info.metrics_problems)} unreadable line(s) skipped"
    return (f"**{escape(info.name)}** — {info.level}-level LSTM over {level_unit(info.level).plural}, "
            f"{info.num_layers}×{info.hidden_size} (embedding {info.emb_size}), {info.parameters / 1e6:.2f} M "
            f"parameters, vocabulary {info.vocab_size:,}  \n"
            f"Trained on <code>{escape(info.data)}</code>{trained} · {measured}")


def refused(message: str, title: str) -> gr.Error:
    """A visitor's request refused, with a message for them alone: Gradio prints a traceback for any other
    `gr.Error`, and the message (which may quote what they typed) would land in the server's log. The toast reads
    the message as HTML, so it is escaped."""
    return gr.Error(escape(message), title=title, print_exception=False)


def next_token_figure(next_tokens: NextTokens) -> dict:
    """Horizontal bars of the top next tokens, likeliest on top; the token the sample took is highlighted.

    Plotly's figure JSON as plain data (`plot_value` hands it to `gr.Plot`): a `go.Figure` validates every
    property, about 10 ms a chart on the server's one Python thread, and every sample ends with this chart."""
    scores = list(reversed(next_tokens.scores))
    chosen_id = next_tokens.chosen.id if next_tokens.chosen else None
    bars = dict(type="bar", x=[s.probability for s in scores], y=[escape(visible(s.token)) for s in scores],
                orientation="h",
                marker=dict(color=[CHOSEN_COLOUR if s.id == chosen_id else BAR_COLOUR for s in scores]),
                text=[f"{s.probability:.1%}" for s in scores], textposition="outside", cliponaxis=False,
                hovertemplate="%{y}: %{x:.2%}<extra></extra>")
    context = escape(next_tokens.context[-TITLE_CONTEXT_CHARS:].replace("\n", "↵"))
    heading = f"Next token after<br>“…{context}”" if next_tokens.context else "First token of a text"
    detail = ""
    if next_tokens.chosen is not None:
        taken, chosen = escape(visible(next_tokens.chosen.token)), next_tokens.chosen.probability
        missing = "" if chosen_id in {s.id for s in scores} else f", not in the top {len(scores)}"
        detail = f"the sample at T = {next_tokens.temperature:g} took <b>{taken}</b> ({chosen:.1%}{missing})"
    top = max((s.probability for s in scores), default=1.0)
    layout = dict(
        title=_title(heading, detail), template=TEMPLATE_JSON, showlegend=False,
        height=130 + 24 * len(scores), margin=dict(l=10, r=30, t=90, b=40),
        xaxis=dict(title=dict(text="probability"), tickformat=".0%", range=[0, min(1.0, top * 1.2) or 1.0]),
        yaxis=dict(type="category", automargin=True))
    return dict(data=[bars], layout=layout)


def plot_value(figure: dict) -> PlotData:
    """A figure's JSON as `gr.Plot` shows it, without building a `go.Figure` again."""
    return PlotData(type="plotly", plot=json.dumps(figure))


def compare_markdown(comparison: Comparison) -> str:
    """Where each model's run stands, one block per model, then both models' bits per character side by
    side: the one measure that compares models whatever their tokens are."""
    status = "  \n".join(f"**{escape(run.model)}**: {status_markdown(run)}" for run in comparison.runs)
    return f"{status}\n\n{bits_table(comparison)}"


def bits_table(comparison: Comparison) -> str:
    """A Markdown table, one column per model: bits per character of the prompt, of each sample and of the
    model's validation and test text (as logged in training), with a note where a figure is a lower bound."""
    runs, infos = comparison.runs, comparison.infos
    rows = [["tokens", *(run.unit.plural for run in runs)],
            ["prompt", *(_bpc_cell(_text_bpc([s.probability for s in run.reading.scores], run.prompt.characters),
                                   run.lower_bound) for run in runs)]]
    for index in range(max(len(run.samples) for run in runs)):
        cells = []
        for run in runs:
            sample = run.samples[index] if index < len(run.samples) else None
            cells.append("—" if sample is None else _bpc_cell(_text_bpc(sample.probabilities, len(sample.text)),
                                                               run.lower_bound))
        temperatures = {f"{run.samples[index].temperature:g}" for run in runs if index < len(run.samples)}
        rows.append([f"sample at T = {', '.join(sorted(temperatures))}", *cells])
    rows.append(["validation (training log)", *(_bpc_cell(info.validation_bpc, info.lower_bound) for info in infos)])
    rows.append(["test (training log)", *(_bpc_cell(info.test_bpc, info.lower_bound) for info in infos)])
    header = ["**bits per character**", *(f"**{escape(run.model)}**" for run in runs)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    notes = ["Lower is better; bits per character compare models whatever their tokens are."]
    if any(run.lower_bound for run in runs):
        notes.append(f"\\* {escape(LOWER_BOUND)}.")
    return "\n".join(lines) + "\n\n" + " ".join(notes)


# -- inside the LSTM -------------------------------------------------------------------------------
def unit_heatmap(view: UnitView) -> go.Figure:
    """Units (rows, best first) by tokens (columns, labelled with the token), coloured by value."""
    positions, labels = _positions(view), [escape(visible(t, compact=True)) for t in view.tokens]
    rows = [f"unit {unit}" for unit in view.units]
    where = [[f"#{p} {label}" for p, label in zip(positions, labels)]] * len(rows)
    height = 155 + 16 * len(rows)
    figure = go.Figure(go.Heatmap(
        z=view.values.tolist(), x=positions, y=rows, customdata=where, **_colour_range(view),
        colorbar=dict(thickness=12, len=min(1.0, 300 / height), yanchor="top", y=1),
        hovertemplate="%{y} at %{customdata}: %{z:.3f}<extra></extra>"))
    figure.update_layout(
        title=_title(_what(view), f"{len(rows)} of {view.hidden_size} units, by {view.ordered_by}"),
        template=TEMPLATE, height=height, margin=dict(l=10, r=10, t=65, b=50),
        yaxis=dict(autorange="reversed", type="category", automargin=True, tickfont=dict(size=10)))
    return _token_axis(figure, view)


def unit_trace(view: UnitView) -> go.Figure:
    """One unit's value at each token, on the heatmap's token axis."""
    positions = _positions(view)
    labels = [escape(visible(t, compact=True)) for t in view.tokens]
    figure = go.Figure(go.Scatter(
        x=positions, y=view.trace, mode="lines+markers", marker=dict(size=4), line=dict(color="#4263eb"),
        customdata=labels, hovertemplate="#%{x} %{customdata}: %{y:.3f}<extra></extra>"))
    colours = _colour_range(view)
    figure.update_layout(
        title=_title(f"Unit {view.trace_unit}", _what(view)),
        template=TEMPLATE, height=295, margin=dict(l=10, r=10, t=65, b=50), showlegend=False,
        yaxis=dict(zeroline=True, range=[colours["zmin"] - 0.05, colours["zmax"] + 0.05]
                   if view.quantity != "c" else None))
    return _token_axis(figure, view)


def unit_table(view: UnitView) -> pd.DataFrame:
    """The ranked units with their scores, for a table beside the heatmap."""
    rows = []
    for rank, row in enumerate(view.ranking, 1):
        cells = {"rank": rank, "unit": row.unit, view.score_label: round(row.score, 3)}
        if isinstance(row, SpanMatch):
            cells.update({"mean inside": round(row.inside, 3), "mean outside": round(row.outside, 3)})
        rows.append(cells)
    return pd.DataFrame(rows)


def inside_markdown(view: UnitView) -> str:
    """What is shown, from which text, and what was left out."""
    lines = [f"**{escape(view.text.model)}** reading {escape(view.text.description)}: {_what(view)}, "
             f"{len(view.units)} of {view.hidden_size} units by {view.ordered_by}"]
    lines += [f"⚠️ {escape(note)}" for note in view.notes]
    return "  \n".join(lines)


def positions_html(view: UnitView) -> str:
    """The shown text, one span per token (its readable piece; a token that is only whitespace drawn), with
    the positions (every tenth written, all on hover, with the raw token), the marked span highlighted."""
    parts = []
    for position, token, piece in zip(_positions(view), view.tokens, view.pieces):
        marked = view.marked is not None and view.marked[0] <= position <= view.marked[1]
        blank = piece != "" and not piece.strip()  # only whitespace: drawn, so it can be seen and pointed at
        kind = "ws" if blank else "part" if piece == "" else ""  # part: bytes of a character a later token ends
        classes = " ".join(c for c in (kind, "marked" if marked else "") if c)
        number = f"<sub>{position}</sub>" if position % 10 == 0 else ""
        shown = visible(token, compact=True) if blank else piece.replace(UNK, "⟨unk⟩") if token == UNK else piece
        lead = "" if blank else shown[:len(shown) - len(shown.lstrip(" "))]  # a word's space goes before its number
        after = "\n" if "\n" in piece else ""
        tooltip = escape(f"#{position} {visible(token)}" + (" (part of a character)" if kind == "part" else ""))
        parts.append(f'{lead}{number}<span class="{classes}" title="{tooltip}">'
                     f"{escape(shown[len(lead):].rstrip(chr(10)))}</span>{after}")
    return f'<div class="lm-positions">{"".join(parts)}</div>'


# -- the cell atlas ---------------------------------------------------------------------------------
def atlas_markdown(name: str, atlas: ModelAtlas | None) -> str:
    """Above the atlas table: whose atlas it is and where its units were chosen and scored; without an atlas, one
    line saying so and where to look instead."""
    if atlas is None:
        return (f"**{escape(name)}** has no cell atlas (`python -m lmdemo atlas MODEL` writes one): the detailed view "
                f"below shows any layer's units over your text.")
    return (f"**What the units of {escape(name)} follow**: for each property of the text, the one unit (of every "
            f"layer's h and c) that follows it best, chosen on the {escape(atlas.chosen_on)} and scored on the "
            f"{escape(atlas.scored_on)}, text "
            f"it never trained on. **random**: the best unit of a randomly initialised model of the same shape, chosen "
            f"and scored the same way: what training added is the gap. Choose a row to see its unit over your text.")


def atlas_frame(atlas: ModelAtlas | None) -> pd.DataFrame:
    """The atlas table: one row per property, with its unit, score, the random baseline and what the unit does."""
    rows = [{"property": row.property.replace("_", " "), "unit": row.label, "metric": METRIC_NAMES.get(row.metric,
                                                                                                     row.metric),
             "score": _score_text(row.score, row.metric), "random": _score_text(row.baseline, row.metric),
             "what it does": row.sentence} for row in (atlas.rows if atlas is not None else [])]
    return pd.DataFrame(rows, columns=["property", "unit", "metric", "score", "random", "what it does"])


def unit_text_html(reading: UnitReading) -> str:
    """The chosen unit over each text, Karpathy style: each token's background coloured by the unit's value after
    reading it (a diverging scale centred on 0, or on the sentiment threshold), where a yes/no property holds
    underlined, with the legend; under each heading its caption."""
    row, bound, centre = reading.row, reading.bound, reading.row.centre
    white = f"{centre:+.2f}, the threshold" if row.threshold is not None else "0"
    note = ""
    if row.kind == SENTIMENT:
        note = " · the reviews are held out, their rating sentences removed"
    elif any(text.holds is not None for text in reading.texts):
        note = f' · <span class="holds">underlined</span>: where {escape(row.description)} holds'
    legend_ = (f'<div class="lm-legend">the unit\'s value after each token: {centre - bound:.2f} '
               f'<span class="lm-scale"></span> {centre + bound:+.2f} (white: {white}){note}</div>')
    sections = []
    for text in reading.texts:
        spans = []
        for index, (token, piece, value) in enumerate(zip(text.tokens, text.pieces, text.values)):
            shown = escape(piece.replace(UNK, "⟨unk⟩") if token == UNK else piece).replace("\n", NEWLINE)
            classes = "tok holds" if text.holds is not None and text.holds[index] else "tok"
            tooltip = escape(f"#{text.cut + index} {visible(token)}: {value:+.3f}")
            background = unit_colour(value - centre, bound)
            spans.append(f'<span class="{classes}" style="background:{background}" title="{tooltip}">{shown}</span>')
        count = f"{len(text.tokens):,} tokens" + (f" (the last of {text.cut + len(text.tokens):,})" if text.cut else "")
        caption = f'<p class="lm-note lm-caption">{escape(text.caption)}</p>' if text.caption else ""
        sections.append(f'<section class="lm-col"><header><b>{escape(text.title)}</b><small>{count}</small>'
                        f'</header>{caption}<div class="lm-text{"" if reading.by_line else " mono"}">'
                        f'{"".join(spans)}</div></section>')
    score = (f"held-out {METRIC_NAMES.get(row.metric, row.metric)} {_score_text(row.score, row.metric)}, "
             f"random model {_score_text(row.baseline, row.metric)}")
    return (f'<div class="lm-atlas-unit"><p class="lm-atlas-sentence"><b>{escape(row.sentence)}</b> '
            f'<span class="lm-note">{escape(score)}</span></p>{legend_}'
            f'<div class="lm-unit-texts">{"".join(sections)}</div></div>')


def unit_colour(value: float, bound: float) -> str:
    """A value's background on the diverging scale: transparent at 0, strongest at ±`bound`."""
    red, green, blue = POSITIVE_RGB if value > 0 else NEGATIVE_RGB
    return f"rgba({red},{green},{blue},{STRONGEST * min(1.0, abs(value) / bound):.3f})"


def _title(heading: str, detail: str = "") -> dict:
    """A figure's title: the heading, and under it, smaller and grey, the detail (Plotly markup, already escaped).
    Plotly never wraps a title, so each line is kept short enough for a phone (about 40 characters)."""
    small = f"<br><span style='font-size:12px;color:#5b6673'>{detail}</span>" if detail else ""
    return dict(text=heading + small, x=0, font=dict(size=14))


def _score_text(score: float, metric: str) -> str:
    return f"{score:.1%}" if metric == "accuracy" else f"{score:.3f}"


def _positions(view: UnitView) -> list[int]:
    return list(range(view.start, view.start + len(view.tokens)))


def _what(view: UnitView) -> str:
    return f"{QUANTITIES[view.quantity]}, layer {view.layer + 1} of {view.num_layers}"


def _colour_range(view: UnitView) -> dict:
    """Gates on 0..1; h and the candidate on -1..1; c symmetric around 0 up to its largest shown |value|."""
    if view.quantity.endswith("_gate"):
        return dict(colorscale=GATE_SCALE, zmin=0.0, zmax=1.0)
    bound = 1.0 if view.quantity != "c" else max(float(view.values.abs().max()), *map(abs, view.trace), 1e-6)
    return dict(colorscale=SIGNED_SCALE, zmid=0.0, zmin=-bound, zmax=bound)


def _token_axis(figure: go.Figure, view: UnitView) -> go.Figure:
    """Label the x axis with the tokens and draw the marked span and the token whose change was ranked."""
    positions = _positions(view)
    every = max(1, math.ceil(len(positions) / MAX_TOKEN_LABELS))
    labels = [visible(t, compact=True) for t in view.tokens[::every]]
    figure.update_xaxes(tickmode="array", tickvals=positions[::every], ticktext=labels,
                        tickangle=0 if all(len(label) <= 1 for label in labels) else None,  # upright characters
                        tickfont=dict(size=10, family="ui-monospace, monospace"), showgrid=False,
                        range=[positions[0] - 0.5, positions[-1] + 0.5])
    if view.marked is not None:
        figure.add_vrect(x0=view.marked[0] - 0.5, x1=view.marked[1] + 0.5, line=dict(color=MARK_COLOUR, width=2),
                         fillcolor="rgba(0,0,0,0)")
    if view.at is not None:
        figure.add_vline(x=view.at, line=dict(color=MARK_COLOUR, width=1.5, dash="dot"))
    return figure


def _sample_summary(sample: Sample, unit: LevelUnit, done: bool) -> str:
    text = unit.count(len(sample.ids))
    bpc = _text_bpc(sample.probabilities, len(sample.text))
    if bpc is not None:
        text += f" · {bpc:.2f} bits/char"
    if sample.stopped_by:
        text += " · ended at " + ("<eos>" if sample.stopped_by == "eos" else "stop string")
    elif not done:
        text += " · …"
    return escape(text)


def surprisal_summary(probabilities: Sequence[float], characters: int, unit: LevelUnit) -> str:
    """"N units, X bits/char (perplexity P per token)" for tokens read with these probabilities that stand
    for `characters` characters of text as written (bits per character left out when there are none)."""
    loss = mean_surprisal(probabilities)
    if loss is None:
        return unit.count(0)
    bpc = _text_bpc(probabilities, characters)
    per_token = f"perplexity {perplexity(loss):,.2f} per token"
    figures = f"{bpc:.2f} bits/char ({per_token})" if bpc is not None else per_token
    return f"{unit.count(len(probabilities))}, {figures}"


def mean_surprisal(probabilities: Sequence[float]) -> float | None:
    """Mean -ln p in nats (the loss `metrics.bits` and `metrics.perplexity` convert); None for no tokens."""
    if not probabilities:
        return None
    return -sum(math.log(max(p, 1e-45)) for p in probabilities) / len(probabilities)


def _text_bpc(probabilities: Sequence[float], characters: int) -> float | None:
    """Bits per character of a scored text: its tokens' total bits ÷ its characters as written (None if it
    has none)."""
    loss = mean_surprisal(probabilities)
    if loss is None or not characters:
        return None
    return bits_per_character(loss, len(probabilities) / characters)


def _surprisal_bits(probability: float) -> float:
    return bits(-math.log(max(probability, 1e-45)))


def _text_classes(progress: Progress) -> str:
    """A text read as one stream of characters (newlines included) is laid out as written: monospaced."""
    return "lm-text" if progress.by_line else "lm-text mono"


def _bpc_cell(bpc: float | None, lower_bound: bool) -> str:
    """A figure of the bits-per-character table (Markdown), marked `*` when it is a lower bound."""
    if bpc is None:
        return "—"
    return f"{bpc:.3f}\\*" if lower_bound else f"{bpc:.3f}"
