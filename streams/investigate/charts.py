"""Timeline pictures for the report: matplotlib, drawn to SVG text, no display needed.

`matplotlib.figure.Figure` is used without pyplot (matplotlib's advice for servers and
batch jobs), so no global figure state is touched, on the Agg backend (never an
interactive one). Glyphs are written as paths
(`svg.fonttype: path`), so the picture looks the same on a machine without the fonts.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import matplotlib
from matplotlib import dates as mdates
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from streams.investigate.timeline import MINUTE_MS, Timeline

_PROLOGUE = re.compile(rb"\A.*?(?=<svg)", re.DOTALL)
COLOURS = {"bars": "#4c72b0", "window": "#f2c14e", "cumulative": "#c44e52", "threshold": "#333333"}


@dataclass(frozen=True, slots=True)
class Threshold:
    """One firing requirement, as drawn: `count >= 3`, `distinct(subject_ids) >= 50`."""

    label: str
    at_least: int


DAY_MS = 86_400_000


def _when(ms: int) -> float:
    """matplotlib's date number (days since its epoch, 1970-01-01 by default) of epoch ms."""
    return ms / DAY_MS + _EPOCH_OFFSET_DAYS


# matplotlib counts days from `dates.get_epoch()`; 0 unless a user's rcParams moved it
_EPOCH_OFFSET_DAYS = (
    datetime(1970, 1, 1, tzinfo=UTC)
    - datetime.fromisoformat(mdates.get_epoch()).replace(tzinfo=UTC)  # type: ignore[no-untyped-call]
).total_seconds() / 86_400


def timeline_svg(
    timeline: Timeline,
    window_start_ms: int,
    window_end_ms: int,
    thresholds: list[Threshold],
    picture_id: str,
) -> str:
    """An inline `<svg>` element: matching events per bucket, the window and its threshold.

    Bars: matching events per minute (or hour); shaded: the alert's window; line: events
    counted in the window so far, against the requirement thresholds (dashed) on the right
    axis. `picture_id` makes the SVG's internal ids unique within a page of many pictures.
    """
    # never an interactive backend, whatever MPLBACKEND says: this runs in batch jobs
    matplotlib.use("Agg")
    with matplotlib.rc_context(
        {"svg.fonttype": "path", "svg.hashsalt": picture_id, "svg.id": f"svg-{picture_id}"}
    ):
        fig = Figure(figsize=(9.0, 2.8), dpi=96)
        # fixed margins: constrained layout would measure every label first, twice the cost
        fig.subplots_adjust(left=0.07, right=0.93, bottom=0.2, top=0.88)
        ax = fig.add_subplot()
        step = timeline.bucket_ms
        ys = [n for _, n in timeline.counts]
        unit = "minute" if step == MINUTE_MS else "hour"
        # one stairs artist for all buckets: a bar per bucket costs a patch each
        edges = [_when(b) for b, _ in timeline.counts] + [_when(timeline.end_ms)]
        ax.stairs(
            ys,
            edges,
            fill=True,
            color=COLOURS["bars"],
            label=f"matching events per {unit}",
        )
        ax.axvspan(
            _when(window_start_ms),
            _when(window_end_ms),
            color=COLOURS["window"],
            alpha=0.25,
            label="alert window",
        )
        ax.set_xlim(_when(timeline.start_ms), _when(timeline.end_ms))
        ax.set_ylabel(f"events / {unit}")
        ax.set_ylim(bottom=0, top=max([1, *ys]) * 1.15)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        locator = mdates.AutoDateLocator(tz=UTC)  # type: ignore[no-untyped-call]
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))  # type: ignore[no-untyped-call]
        ax.set_xlabel("event time (UTC)")

        # events counted in the window so far, against the thresholds
        cum_x, cum_y, total = [_when(window_start_ms)], [0], 0
        for b, n in timeline.counts:
            if window_start_ms <= b < window_end_ms:
                total += n
                cum_x.append(_when(b + step))
                cum_y.append(total)
        right = ax.twinx()
        right.step(
            cum_x,
            cum_y,
            where="pre",
            color=COLOURS["cumulative"],
            linewidth=1.6,
            label="counted in window",
        )
        for t in thresholds:
            right.axhline(t.at_least, color=COLOURS["threshold"], linestyle="--", linewidth=1.0)
            right.annotate(
                f"threshold: {t.label}",
                xy=(_when(window_start_ms), t.at_least),
                xytext=(3, 3),
                textcoords="offset points",
                fontsize=8,
                color=COLOURS["threshold"],
            )
        top = max([1, total, *(t.at_least for t in thresholds)]) * 1.15
        right.set_ylim(0, top)
        right.set_ylabel("counted in window")
        right.yaxis.set_major_locator(MaxNLocator(integer=True))
        handles = ax.get_legend_handles_labels()
        more = right.get_legend_handles_labels()
        # above the plot, where it hides no bar
        ax.legend(
            handles[0] + more[0],
            handles[1] + more[1],
            loc="lower left",
            bbox_to_anchor=(0.0, 1.0),
            ncols=3,
            fontsize=8,
            frameon=False,
        )
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return _PROLOGUE.sub(b"", buf.getvalue()).decode()
