"""The digest's chart: 14 days of volume, deflection and SLA compliance as one PNG.

matplotlib is driven through its object API with the Agg canvas (no pyplot, no global
state, no display), so rendering is safe in a server process and in parallel tests. It is
imported lazily: without matplotlib the digest simply goes without a picture.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence

from escalation.report import DayPoint

log = logging.getLogger(__name__)

LABELS: dict[str, dict[str, str]] = {
    "title": {"en": "Last {n} days", "ru": "Последние {n} дн."},
    "volume": {"en": "Problems", "ru": "Обращения"},
    "deflection": {"en": "Deflection, %", "ru": "Решено ботом, %"},
    "sla": {"en": "SLA met, %", "ru": "SLA выполнен, %"},
    "axis_count": {"en": "problems per day", "ru": "обращений в день"},
}


def _l(key: str, lang: str) -> str:
    return LABELS[key]["ru" if lang == "ru" else "en"]


def chart_available() -> bool:
    """Whether matplotlib can be imported here."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def render_chart(points: Sequence[DayPoint], lang: str = "en") -> bytes | None:
    """A PNG (bytes) of daily problem volume (bars) with deflection and SLA compliance
    (lines, right axis in %); ``None`` when matplotlib is missing or there are no days.

    Days without a rate (no problems, no judged SLA clock) break the line instead of
    pretending 0%.
    """
    if not points:
        return None
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        log.warning("matplotlib is not installed: the digest goes without a chart")
        return None
    nan = float("nan")
    x = list(range(len(points)))
    ticks = [p.day.strftime("%d.%m") for p in points]
    volume = [p.problems for p in points]
    deflection = [p.deflection * 100 if p.deflection is not None else nan for p in points]
    sla = [p.sla_compliance * 100 if p.sla_compliance is not None else nan for p in points]

    fig = Figure(figsize=(8, 4.2), dpi=110)  # ~880x460 px: legible on a phone screen
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    bars = ax.bar(x, volume, color="#9ecae1", label=_l("volume", lang))
    ax.set_ylabel(_l("axis_count", lang))
    ax.set_xticks(x, ticks, rotation=45, fontsize=8)
    ax.set_ylim(0, max([*volume, 1]) * 1.25)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # whole problems, no 2.5
    ax.spines["top"].set_visible(False)
    rates = ax.twinx()
    (d_line,) = rates.plot(
        x, deflection, color="#31a354", marker="o", linewidth=2, label=_l("deflection", lang)
    )
    (s_line,) = rates.plot(x, sla, color="#de2d26", marker="s", linewidth=2, label=_l("sla", lang))
    rates.set_ylim(0, 105)
    rates.set_ylabel("%")
    rates.spines["top"].set_visible(False)
    ax.set_title(_l("title", lang).format(n=len(points)), fontsize=11)
    ax.legend(
        handles=[bars, d_line, s_line],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.18),
        ncol=3,
        frameon=False,
        fontsize=9,
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
