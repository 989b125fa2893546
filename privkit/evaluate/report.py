"""Report: one format for every privkit result.

A :class:`Report` holds metrics (nested dicts of numbers, with confidence intervals where they
are statistical), tables, figures and plain-language text, and renders to

- ``metrics.json`` for machines: stable keys documented in ``docs/reports.md``;
- ``report.html`` for people: self-contained (PNG figures embedded as base64, inline CSS, no
  external assets), every user-supplied string HTML-escaped.

Suppression, anonymization, unlearning, residual-knowledge and attack results are all Reports.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from privkit.io.atomic import atomic_write_json, atomic_write_text, to_jsonable


@dataclass
class _Block:
    kind: str  # "text" | "table" | "figure" | "verdict" | "heading"
    title: str = ""
    body: Any = None
    extra: dict = field(default_factory=dict)


def figure_to_png(fig) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def new_figure(width: float = 5.0, height: float = 3.5):
    """A matplotlib figure on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.figure(figsize=(width, height))


class Report:
    """Metrics, tables, figures and text of one run.

    Parameters
    ----------
    title : str
    kind : str
        What produced it (``train``, ``evaluate``, ``suppress``, ``unlearn``, ``audit-residual``...).

    Examples
    --------
    >>> r = Report("demo", "evaluate")
    >>> r.set_metric("accuracy", 0.9, ci=(0.85, 0.94))
    >>> r.metrics["accuracy"], r.metrics["accuracy_ci"]
    (0.9, [0.85, 0.94])
    """

    def __init__(self, title: str, kind: str):
        self.title = title
        self.kind = kind
        self.metrics: dict[str, Any] = {}
        self.blocks: list[_Block] = []
        self.created = _dt.datetime.now().isoformat(timespec="seconds")

    # -- content ------------------------------------------------------------------------------
    def set_metric(self, key: str, value: Any, ci: tuple[float, float] | None = None, section: str | None = None) -> None:
        """Set ``metrics[key]`` (inside ``metrics[section]`` if given) and ``key + "_ci"`` when a CI is given."""
        target = self.metrics.setdefault(section, {}) if section else self.metrics
        target[key] = value
        if ci is not None:
            target[f"{key}_ci"] = [float(ci[0]), float(ci[1])]

    def update_metrics(self, values: dict, section: str | None = None) -> None:
        target = self.metrics.setdefault(section, {}) if section else self.metrics
        target.update(values)

    def heading(self, text: str) -> None:
        self.blocks.append(_Block("heading", text))

    def text(self, text: str, title: str = "") -> None:
        self.blocks.append(_Block("text", title, text))

    def verdict(self, text: str, ok: bool | None = None) -> None:
        """A plain-language conclusion; ``ok`` colours it (green/red/neutral)."""
        self.blocks.append(_Block("verdict", "", text, {"ok": ok}))
        self.metrics.setdefault("verdict", text)

    def table(self, title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.blocks.append(_Block("table", title, [list(headers), [list(r) for r in rows]]))

    def figure(self, title: str, fig) -> None:
        """Embed a matplotlib figure (rendered to PNG now, so the figure can be closed)."""
        self.blocks.append(_Block("figure", title, figure_to_png(fig)))

    def image(self, title: str, png: bytes) -> None:
        self.blocks.append(_Block("figure", title, png))

    # -- output -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return to_jsonable(dict(self.metrics))

    def write(self, folder: str | Path) -> tuple[Path, Path]:
        """Write ``metrics.json`` and ``report.html`` into ``folder`` (atomically)."""
        folder = Path(folder)
        atomic_write_json(folder / "metrics.json", self.to_dict())
        atomic_write_text(folder / "report.html", self.to_html())
        return folder / "metrics.json", folder / "report.html"

    def to_html(self) -> str:
        e = lambda s: html.escape(str(s), quote=True)  # noqa: E731  every user string goes through here
        parts = [
            "<!DOCTYPE html><html><head><meta charset='utf-8'>",
            f"<title>{e(self.title)}</title><style>{_CSS}</style></head><body>",
            f"<h1>{e(self.title)}</h1><p class='meta'>{e(self.kind)} &middot; {e(self.created)} &middot; privkit</p>",
        ]
        for b in self.blocks:
            if b.kind == "heading":
                parts.append(f"<h2>{e(b.title)}</h2>")
            elif b.kind == "text":
                if b.title:
                    parts.append(f"<h3>{e(b.title)}</h3>")
                parts.append(f"<p>{e(b.body)}</p>")
            elif b.kind == "verdict":
                cls = {True: "ok", False: "bad", None: "neutral"}[b.extra.get("ok")]
                parts.append(f"<div class='verdict {cls}'>{e(b.body)}</div>")
            elif b.kind == "table":
                headers, rows = b.body
                parts.append(f"<h3>{e(b.title)}</h3><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in headers) + "</tr>")
                for r in rows:
                    parts.append("<tr>" + "".join(f"<td>{e(_fmt(c))}</td>" for c in r) + "</tr>")
                parts.append("</table>")
            elif b.kind == "figure":
                data = base64.b64encode(b.body).decode("ascii")
                parts.append(f"<figure><img alt='{e(b.title)}' src='data:image/png;base64,{data}'>"
                             f"<figcaption>{e(b.title)}</figcaption></figure>")
        parts.append("<h2>Metrics</h2><pre>" + e(_json_pretty(self.to_dict())) + "</pre></body></html>")
        return "\n".join(parts)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _json_pretty(d: dict) -> str:
    import json

    return json.dumps(d, indent=2, sort_keys=True, allow_nan=False)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:0}.meta{color:#777;margin-top:.2em}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{display:inline-block;margin:.5em}figcaption{color:#555;font-size:.9em;text-align:center}
.verdict{padding:.8em 1em;border-radius:6px;margin:1em 0;font-weight:600}
.ok{background:#e6f4ea;color:#1e5631}.bad{background:#fdecea;color:#8a1c1c}.neutral{background:#eef2f7;color:#333}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.85em}
"""
