"""One look for every HTML page the project writes (distribution report, overlap audit, eval).

Plain HTML and CSS, no scripts and no external assets: a page opens from a local folder, an
object store or a CI artifact alike. Helpers format numbers the way people read them (thousands
separators, a sensible number of digits, percentages) and escape everything that comes from data.
"""
from __future__ import annotations

import html
import math
from typing import Any, Iterable, Sequence

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;background:#f6f7f9;color:#222}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:26px;margin:0 0 4px} h2{font-size:20px;margin:34px 0 10px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:16px;margin:20px 0 8px}
p{line-height:1.45;max-width:900px}
.sub{color:#666;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:18px 0}
.card{background:#fff;border:1px solid #e1e4e8;border-radius:8px;padding:10px 14px;min-width:128px}
.card .v{font-size:20px;font-weight:600} .card .k{font-size:12px;color:#666}
table{border-collapse:collapse;background:#fff;font-size:13px;margin:6px 0 14px}
th,td{border:1px solid #e1e4e8;padding:4px 9px;text-align:left;vertical-align:top}
th{background:#f0f2f5} td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
td.img{text-align:center} td.img img{display:block;margin:0 auto 4px;max-width:128px;border-radius:4px}
.ok{color:#1a7f37;font-weight:600} .bad{color:#cf222e;font-weight:600} .na{color:#888}
.note{background:#fff;border-left:4px solid #4C72B0;padding:8px 12px;margin:12px 0;font-size:14px}
figure{background:#fff;border:1px solid #e1e4e8;border-radius:8px;padding:10px;margin:14px 0}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{font-size:13px;color:#444;margin-top:6px}
code{background:#eef;padding:1px 4px;border-radius:3px;font-size:12px}
.scroll{max-height:520px;overflow:auto}
nav.sub a{color:#4C72B0}
"""


def esc(x: Any) -> str:
    return html.escape(str(x))


def num(x: Any, digits: int = 3) -> str:
    """A number as people read it: ``12,345``; ``0.123``; ``1.23e-05``; ``–`` for nothing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if x.is_integer() and abs(x) < 1e15:
            return f"{int(x):,}"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        if abs(x) >= 0.001 or x == 0:
            return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:,.{max(0, digits - len(str(int(abs(x)))))}f}"
        return f"{x:.2e}"
    return esc(x)


def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def card(label: str, value: str) -> str:
    return f"<div class='card'><div class='v'>{value}</div><div class='k'>{esc(label)}</div></div>"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric: Sequence[bool] | None = None,
          empty: str = "Nothing to show.", element_id: str | None = None, raw: bool = False) -> str:
    """A table; ``numeric[i]`` right-aligns column i and formats it with :func:`num`; cells are
    escaped unless ``raw`` (then the caller built safe HTML). ``empty``: the sentence shown
    instead of an empty table."""
    rows = list(rows)
    if not rows:
        return f"<p class='na'>{esc(empty)}</p>"
    numeric = list(numeric or [False] * len(headers))
    ident = f" id='{esc(element_id)}'" if element_id else ""
    head = "".join(f"<th{' class=n' if n else ''}>{esc(h)}</th>" for h, n in zip(headers, numeric))
    body = []
    for row in rows:
        cells = []
        for value, is_num in zip(row, numeric):
            if is_num:
                cells.append(f"<td class='n'>{num(value)}</td>")
            else:
                cells.append(f"<td>{value if raw else esc(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table{ident}><tr>{head}</tr>{''.join(body)}</table>"


def page(title: str, subtitle: str, body: str) -> str:
    """The whole document around ``body``."""
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{esc(title)}</title><style>{CSS}</style></head>"
            f"<body><main><h1>{esc(title)}</h1><div class='sub'>{subtitle}</div>{body}</main></body></html>\n")
