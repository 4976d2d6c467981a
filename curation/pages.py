"""One look for every HTML page the project writes (distribution report, overlap audit, eval).

Plain HTML and CSS, no scripts and no external assets: a page opens from a local folder, an
object store or a CI artifact alike. Helpers format numbers the way people read them (thousands
separators, a sensible number of digits, percentages, durations) and escape everything that comes
from data, so a caption or an entry can never inject markup.
"""
from __future__ import annotations

import html
import math
import numbers
from typing import Any, Iterable, Sequence

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;background:#f6f7f9;color:#222}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:26px;margin:0 0 4px} h2{font-size:20px;margin:34px 0 10px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:16px;margin:20px 0 8px} h4{font-size:13px;margin:8px 0 4px;font-weight:600}
p{line-height:1.45;max-width:900px}
.sub{color:#666;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:18px 0}
.card{background:#fff;border:1px solid #e1e4e8;border-radius:8px;padding:10px 14px;min-width:128px}
.card .v{font-size:20px;font-weight:600} .card .k{font-size:12px;color:#666}
.row{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
table{border-collapse:collapse;background:#fff;font-size:13px;margin:6px 0 14px}
th,td{border:1px solid #e1e4e8;padding:4px 9px;text-align:left;vertical-align:top}
th{background:#f0f2f5} td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.kv th{font-weight:500;background:#f7f8fa;min-width:180px}
table.kv tr.sub th{padding-left:26px;font-weight:400;color:#444}
.thumb{text-align:center;margin-bottom:4px} .thumb img{display:block;margin:0 auto;width:96px;height:96px;object-fit:contain;border-radius:4px}
td .thumb .na{display:inline-block;width:96px;padding:30px 0;font-size:12px}
.ok{color:#1a7f37;font-weight:600} .bad{color:#cf222e;font-weight:600} .na{color:#888}
.note{background:#fff;border-left:4px solid #4C72B0;padding:8px 12px;margin:12px 0;font-size:14px;max-width:900px}
.note.warn{border-left-color:#cf222e}
figure{background:#fff;border:1px solid #e1e4e8;border-radius:8px;padding:10px;margin:14px 0}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{font-size:13px;color:#444;margin-top:6px}
code{background:#eef;padding:1px 4px;border-radius:3px;font-size:12px}
.scroll{max-height:520px;overflow:auto}
nav.sub a{color:#4C72B0}
details{margin:10px 0} summary{cursor:pointer;color:#4C72B0}
"""


def esc(x: Any) -> str:
    return html.escape(str(x))


def num(x: Any, digits: int = 3) -> str:
    """A number as people read it: ``12,345``; ``0.123``; ``1.23e-05``; ``–`` for nothing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, bool) or type(x).__name__ in ("bool_", "bool"):  # numpy's bool is no bool subclass
        return "yes" if x else "no"
    if isinstance(x, numbers.Integral):  # numpy integers too
        return f"{int(x):,}"
    if isinstance(x, numbers.Real):
        x = float(x)
        if math.isinf(x):
            return "∞" if x > 0 else "-∞"
        if x.is_integer() and abs(x) < 1e15:
            return f"{int(x):,}"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        if abs(x) >= 0.001:
            return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:,.{max(0, digits - len(str(int(abs(x)))))}f}"
        return f"{x:.2e}"
    return esc(x)


def pct(x: float | None, digits: int = 1) -> str:
    """A fraction (0.5) as a percentage ("50.0%"); ``–`` for nothing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.{digits}f}%"


def seconds(x: float | None) -> str:
    """A duration: ``0.12 s``, ``8.6 s``, ``4 min 05 s``, ``2 h 03 min``."""
    if x is None or not isinstance(x, numbers.Real) or math.isnan(float(x)):
        return "–"
    x = float(x)
    if 0 < x < 0.01:
        return "< 0.01 s"
    if x < 1:
        return f"{x:.2f} s"
    if x < 60:
        return f"{x:.1f} s"
    if x < 3600:
        m, s = divmod(int(round(x)), 60)
        return f"{m} min {s:02d} s"
    h, rest = divmod(int(round(x)), 3600)
    return f"{h} h {rest // 60:02d} min"


def nbytes(x: float | None) -> str:
    """A size in bytes: ``118 MB`` (decimal units, as download tools report them)."""
    if x is None or not isinstance(x, numbers.Real):
        return "–"
    x = float(x)
    for div, unit in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if abs(x) >= div:
            return f"{x / div:.3g} {unit}"
    return f"{x:.0f} B"


def card(label: str, value: str) -> str:
    """A key figure; ``value`` is HTML the caller made safe (usually from :func:`num`)."""
    return f"<div class='card'><div class='v'>{value}</div><div class='k'>{esc(label)}</div></div>"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric: Sequence[bool] | None = None,
          empty: str = "Nothing to show.", element_id: str | None = None, raw: bool = False,
          css_class: str | None = None) -> str:
    """A table; ``numeric[i]`` right-aligns column i and formats its numbers with :func:`num` (a
    string there is taken as already formatted); cells are escaped unless ``raw`` (then the caller
    built safe HTML). ``empty``: the sentence shown instead of an empty table, so a reader never
    meets a header with nothing under it."""
    rows = list(rows)
    if not rows:
        return f"<p class='na'>{esc(empty)}</p>"
    numeric = list(numeric or [False] * len(headers))
    ident = f" id='{esc(element_id)}'" if element_id else ""
    cls = f" class='{esc(css_class)}'" if css_class else ""
    head = "".join(f"<th{' class=n' if n else ''}>{esc(h)}</th>" for h, n in zip(headers, numeric))
    body = []
    for row in rows:
        cells = []
        for value, is_num in zip(row, numeric):
            if is_num:
                text = (value if raw else esc(value)) if isinstance(value, str) else num(value)
                cells.append(f"<td class='n'>{text}</td>")
            else:
                cells.append(f"<td>{value if raw else esc(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table{ident}{cls}><tr>{head}</tr>{''.join(body)}</table>"


def kv_table(rows: Iterable[tuple[str, str, bool, bool]], *, empty: str = "Nothing to show.",
             element_id: str | None = None) -> str:
    """A two-column label / value table. Each row is ``(label, value_html, numeric, sub)``: the
    value is HTML the caller made safe, ``numeric`` right-aligns it, ``sub`` indents the label
    under the row above (a nested figure such as one language of a per-language count)."""
    rows = list(rows)
    if not rows:
        return f"<p class='na'>{esc(empty)}</p>"
    ident = f" id='{esc(element_id)}'" if element_id else ""
    body = "".join(
        f"<tr{' class=sub' if sub else ''}><th>{esc(label)}</th><td{' class=n' if numeric else ''}>{value}</td></tr>"
        for label, value, numeric, sub in rows)
    return f"<table class='kv'{ident}>{body}</table>"


def figure(src: str, caption: str, element_id: str | None = None, alt: str | None = None) -> str:
    """A plot with its caption; ``src`` is a file next to the page."""
    ident = f" id='{esc(element_id)}'" if element_id else ""
    return (f"<figure{ident}><img src='{esc(src)}' alt='{esc(alt or caption)}'>"
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def note(text_html: str, warn: bool = False) -> str:
    """A highlighted sentence (``text_html`` is safe HTML)."""
    return f"<div class='note{' warn' if warn else ''}'>{text_html}</div>"


def page(title: str, subtitle: str, body: str, heading: str | None = None) -> str:
    """The whole document around ``body``; ``subtitle`` is safe HTML, ``heading`` the visible
    title when it differs from the browser tab's ``title``."""
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{esc(title)}</title><style>{CSS}</style></head>"
            f"<body><main><h1>{esc(heading or title)}</h1><div class='sub'>{subtitle}</div>{body}"
            "</main></body></html>\n")
