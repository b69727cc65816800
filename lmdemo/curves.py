"""The one figure code for training curves: the Streamlit dashboard, the app's Training curves tab and
its Train tab draw with these functions.

Runs are read by `lmdemo.metrics` (the one reader) and shaped by `lmdemo.runs.curve_frame` (one row
per logged point); this module only turns that frame into Plotly figures.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative

from lmdemo.metrics import Run
from lmdemo.runs import MEASURES, X_AXES, curve_frame, smooth

PALETTE = qualitative.Plotly
# plotly_white's layout half: every figure here styles its own traces, and validating the template's trace
# defaults too cost about 15 ms a figure (most of a next-token chart), on the server's one Python thread.
TEMPLATE = go.layout.Template(layout=pio.templates["plotly_white"].layout)
# Plotly never wraps a title: two lines, each short enough for a phone
CURVES_TITLE = "{measure}<br><span style='font-size:12px'>training dashed (smoothed), validation solid</span>"
LOG_X_SPREAD = 10  # runs drawn together whose lengths differ more than this share a log x axis
LOG_TICKS = "~g"  # a log axis labels every tick in full (0.002, 0.001, 0.0009), never a lone mantissa digit


def colours_for(names: Iterable[str]) -> dict[str, str]:
    """One colour per run, by its place in `names`, so it stays put whichever runs are shown."""
    return {name: PALETTE[index % len(PALETTE)] for index, name in enumerate(names)}


def curve_traces(figure: go.Figure, frame: pd.DataFrame, measure: str, x: str, weight: float,
                 colours: dict[str, str]) -> None:
    """Per run: faint raw training points under a dashed smoothed line, validation solid, test a star."""
    unit = MEASURES[measure]
    frame = frame.assign(smoothed=smooth(frame, measure, weight)).dropna(subset=[x, measure])
    hover = (f"<b>%{{meta}}</b><br>{X_AXES[x]}: %{{x:,.4~g}}<br>{unit}: %{{y:,.4~f}}"
             "<br>step %{customdata[0]:,.0f} · epoch %{customdata[1]:.2f}<extra></extra>")
    for run, rows in frame.groupby("run", sort=False):
        colour = colours.get(run, PALETTE[0])
        common = dict(legendgroup=run, meta=run, hovertemplate=hover)
        train, val, test = (rows[rows.split == split] for split in ("train", "val", "test"))
        if not train.empty:
            figure.add_scatter(x=train[x], y=train[measure], mode="lines", opacity=0.25, showlegend=False,
                               line=dict(color=colour, width=1), customdata=train[["step", "epoch"]],
                               name=f"{run} · train (raw)", **common)
            figure.add_scatter(x=train[x], y=train.smoothed, mode="lines", name=f"{run} · train",
                               line=dict(color=colour, width=2, dash="dash"), customdata=train[["step", "epoch"]],
                               **common)
        if not val.empty:
            figure.add_scatter(x=val[x], y=val[measure], mode="lines+markers", name=f"{run} · validation",
                               line=dict(color=colour, width=2.5), marker=dict(size=6),
                               customdata=val[["step", "epoch"]], **common)
        if not test.empty:
            figure.add_scatter(x=test[x], y=test[measure], mode="markers", name=f"{run} · test",
                               marker=dict(color=colour, size=13, symbol="star", line=dict(width=1, color="white")),
                               customdata=test[["step", "epoch"]], **common)


def log_x(frame: pd.DataFrame, x: str) -> bool:
    """Whether the runs in `frame` need a log x axis to all be read: when the longest reaches more than LOG_X_SPREAD
    times as far as the shortest (a visitor's 5-second run beside a 26-minute one is otherwise a line at 0)."""
    points = frame.dropna(subset=[x])
    ends = points.groupby("run", sort=False)[x].max()
    return len(ends) > 1 and bool((points[x] > 0).all()) and ends.max() > LOG_X_SPREAD * ends.min()


def styled(figure: go.Figure, title: str, x: str, y: str, log_y: bool, height: int,
           log_x_axis: bool = False) -> go.Figure:
    figure.update_layout(template=TEMPLATE, title=dict(text=title, x=0, font=dict(size=16)), height=height,
                         margin=dict(l=10, r=10, t=50, b=10), hovermode="closest",
                         legend=dict(orientation="h", yanchor="top", y=-0.18, x=0))
    figure.update_xaxes(title=X_AXES[x], showgrid=True, type="log" if log_x_axis else "linear",
                        tickformat=LOG_TICKS if log_x_axis else None)
    figure.update_yaxes(title=y, type="log" if log_y else "linear", showgrid=True,
                        tickformat=LOG_TICKS if log_y else None)
    return figure


def small_chart(frame: pd.DataFrame, column: str, title: str, x: str, colours: dict[str, str],
                schedule: bool = False) -> go.Figure:
    """One line per run of a training-record column against the chosen x axis.

    A `schedule` (the learning rate) changes in steps over orders of magnitude: drawn as steps, log scale.
    """
    figure = go.Figure()
    rows = frame[frame.split == "train"].dropna(subset=[x, column])
    for run, series in rows.groupby("run", sort=False):
        figure.add_scatter(x=series[x], y=series[column], mode="lines", name=run, meta=run,
                           line=dict(color=colours.get(run, PALETTE[0]), width=2,
                                     shape="hv" if schedule else "linear"),
                           hovertemplate=f"<b>%{{meta}}</b><br>{X_AXES[x]}: %{{x:,.4~g}}"
                                         f"<br>{title}: %{{y:,.4~g}}<extra></extra>")
    return styled(figure, title, x, "", schedule, 300, log_x(rows, x)).update_layout(showlegend=False)


def curves_figure(frame: pd.DataFrame, measure: str = "ppl", x: str = "step", log_y: bool = True,
                  weight: float = 0.6, colours: dict[str, str] | None = None, height: int = 480,
                  title: str | None = None, y_title: str | None = None) -> go.Figure:
    """The dashboard's main chart for a curve frame: every run's training and validation curves overlaid."""
    check_choices(measure, x, weight)
    colours = colours if colours is not None else colours_for(frame.run.unique())
    figure = go.Figure()
    curve_traces(figure, frame, measure, x, weight, colours)
    return styled(figure, title or CURVES_TITLE.format(measure=MEASURES[measure]), x, y_title or MEASURES[measure],
                  log_y, height, log_x(frame, x))


def runs_figure(runs: Sequence[Run], measure: str = "ppl", x: str = "step", log_y: bool = True,
                weight: float = 0.6, height: int = 480, title: str | None = None) -> go.Figure:
    """`curves_figure` of runs read with `lmdemo.metrics`, coloured by their order."""
    return curves_figure(curve_frame(runs), measure, x, log_y, weight, colours_for(run.name for run in runs),
                         height, title)


def curve_points(frame: pd.DataFrame, columns: Sequence[str] = ("step", "tokens", "time", "loss", "ppl", "bpc")
                 ) -> dict[str, Any]:
    """The frame's points as plain JSON per run and split (train, val, test): what an API caller plots."""
    points: dict[str, Any] = {}
    for (run, split), rows in frame.groupby(["run", "split"], sort=False):
        kept = rows[list(columns)].astype(object).where(rows[list(columns)].notna(), None)
        points.setdefault(run, {})[split] = kept.to_dict("records")
    return points


def check_choices(measure: str, x: str, weight: float) -> None:
    """Refuse a measure, axis or smoothing the figures do not know, naming what they do."""
    if not isinstance(measure, str) or measure not in MEASURES:
        raise ValueError(f"measure must be one of {', '.join(MEASURES)} (got {str(measure)[:40]!r})")
    if not isinstance(x, str) or x not in X_AXES:
        raise ValueError(f"x axis must be one of {', '.join(X_AXES)} (got {str(x)[:40]!r})")
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing must be in [0, 1) (got {weight})")
