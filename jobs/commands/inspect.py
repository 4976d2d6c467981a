"""Terminal summary of a run directory (plain text, fits 100 columns).

Shows which stages are done (_SUCCESS), in / out / rejected per stage, whether they reconcile
and their wall time, whether the report and the overlap audit were written (with the audit's
overlap count), rejected rows by reason, where the match and balance stages spent their time (wall seconds, and
task time by phase: read, uid, validate, match, write, ...), the balance figures (t, seed, pool,
matched, expected and actual kept), head / tail split, tail coverage, the per-source breakdown and
the top-20 head entries with count -> kept. Works on partial runs: the distribution part appears
once count and balance are done. RUN may be a local path or an s3:// URL.
"""
from __future__ import annotations

import argparse
from typing import Any

from curation import pages
from curation.errors import InputError
from curation.rundir import RunDir
from jobs.report import (IN_STAGE_TABLE, Row, StageInfo, describe, load_run, read_stages, round_decimals,
                         wall_time)

WIDTH = 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run directory (local path or s3://bucket/prefix)")
    parser.add_argument("--top", type=int, default=20, help="how many head entries to list (default 20)")
    parser.add_argument("--config", "-c", help="run configuration (YAML) whose `storage:` section is used")


def _n(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float) and abs(x) >= 1000:
        return f"{x:,.0f}"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _safe(s: object) -> str:
    """Text from the data (entries, reasons, details) with control characters shown as escapes: an
    entry holding an ANSI sequence must not recolour or clear the user's terminal."""
    text = str(s)
    if not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text):
        return text
    return "".join(c if not (ord(c) < 32 or 127 <= ord(c) < 160) else repr(c)[1:-1] for c in text)


def _cut(s: object, width: int) -> str:
    s = _safe(s)
    return s if len(s) <= width else s[: width - 1] + "~"


def _stage_lines(stages: list[StageInfo]) -> list[str]:
    lines = ["STAGES",
             f"  {'stage':<12}{'done':<6}{'in':>14}{'out':>14}{'rejected':>14}  {'in=out+rej':<11}{'wall':>8} "
             "fingerprint"]
    if not stages:
        lines.append("  (no stage directories yet)")
    for s in stages:
        sm = s.summary or {}
        rec = {None: "-", True: "ok", False: "MISMATCH"}[s.reconciles]
        fp = str((s.success or {}).get("fingerprint", ""))[:12]
        wall = wall_time(sm)
        lines.append(f"  {_cut(s.name, 11):<12}{'yes' if s.done else 'NO':<6}{_n(sm.get('in')):>14}"
                     f"{_n(sm.get('out')):>14}{_n(s.rejected_total):>14}  {rec:<11}"
                     f"{pages.seconds(wall).replace(' s', 's') if wall is not None else '-':>8} {fp}")
    rej = []
    for s in stages:
        r = (s.summary or {}).get("rejected")
        if not isinstance(r, dict) or not r:
            continue
        stage_in = (s.summary or {}).get("in")
        for reason, n in sorted(r.items(), key=lambda kv: -int(kv[1])):
            share = f"({100 * int(n) / stage_in:.2f}% of in)" if isinstance(stage_in, (int, float)) and stage_in else ""
            ex = round_decimals(s.reject_examples.get(reason, ""))
            line = f"  {_cut(s.name, 11):<12}{_cut(reason, 28):<29}{_n(int(n)):>13} {share:<17}"
            if ex:
                line += " e.g. " + _cut(ex, WIDTH - len(line) - 6)
            rej.append(line.rstrip())
    if rej:
        lines += ["", "REJECTED BY REASON"] + rej
    return lines


def _time_lines(stages: list[StageInfo]) -> list[str]:
    """Where each Spark stage's time went: wall seconds of its parts, and its work units' task time
    by phase (summed over tasks, so on N cores it is up to N times the wall time)."""
    lines = []
    for s in stages:
        sm = s.summary or {}
        wall, tasks = sm.get("seconds"), sm.get("task_seconds")
        if not isinstance(wall, dict) and not isinstance(tasks, dict):
            continue
        parts = [f"{k.replace('_', ' ')} {float(v):,.1f}s" for k, v in (wall or {}).items()
                 if isinstance(v, (int, float))]
        lines.append(f"  {_cut(s.name, 11):<12}wall: {', '.join(parts) or '-'}")
        if isinstance(tasks, dict) and tasks:
            total = sum(float(v) for v in tasks.values())
            rows = sm.get("in")
            per_row = (f", {1e6 * total / rows:,.3g} us/row" if isinstance(rows, int) and rows > 0 else "")
            by_share = sorted(tasks.items(), key=lambda kv: -float(kv[1]))
            shares = [f"{k.replace('_', ' ')} {100 * float(v) / total:.0f}%" for k, v in by_share] if total else []
            lines += _wrap([f"task time {total:,.1f}s{per_row}:"] + shares, indent=" " * 14)
    if lines:
        lines = ["", "TIME (wall seconds; task time of the work units by phase, summed over tasks)"] + lines
    return lines


def _page_lines(run: RunDir) -> list[str]:
    """Whether the report and the overlap audit were written; the audit's own figures when it was."""
    lines = ["", "PAGES"]
    index = run.path("report", "index.html")
    if run.storage.exists(index):
        lines.append(f"  {'report':<12}{'yes':<6}{index}")
    else:
        lines.append(f"  {'report':<12}{'NO':<6}metacurate report {run.url}")
    audit_json = run.path("audit", "audit.json")
    if not run.storage.exists(audit_json):
        lines.append(f"  {'audit':<12}{'NO':<6}metacurate audit {run.url}")
        return lines
    try:
        a = run.storage.read_json(audit_json)
        found = [f"{_n(a['overlapping_pool_images'])} of {_n(a['pool_images'])} pool images overlap the eval "
                 f"sets at k = {_n(a['k'])}",
                 f"{_n(a['phash_pairs'])} pHash pairs, {_n(a['pairs'])} confirmed by the colour check"
                 if a.get("max_colour_distance") is not None else f"{_n(a['phash_pairs'])} pHash pairs"]
    except Exception as exc:  # a broken audit.json must not hide the rest of the summary
        found = [f"audit.json unreadable ({_cut(exc, 60)})"]
    lines.append(f"  {'audit':<12}{'yes':<6}{found[0]}")
    lines += [f"  {'':<18}{x}" for x in found[1:] + [run.path("audit", "index.html")]]
    return lines


def _items(rows: list[Row]) -> list[str]:
    """Summary rows as ``label: value`` items; a nested figure's sub-rows join under its label
    (``captions per language: de 72 texts, en 446 texts``)."""
    items: list[str] = []
    parent, subs = "", []

    def flush() -> None:
        if parent and subs:
            items.append(f"{parent}: {', '.join(subs)}")

    for r in rows:
        if r.sub:
            subs.append(f"{_safe(r.label)} {_safe(r.value)}")
            continue
        flush()
        parent, subs = "", []
        if r.value == "":
            parent = _safe(r.label)
        else:
            items.append(f"{_safe(r.label)}: {_safe(r.value)}")
    flush()
    return items


def format_inspect(run: RunDir | str, top: int = 20) -> str:
    """The whole terminal summary as one string (tested directly)."""
    from jobs.report import as_run
    from jobs.stages import balance, count

    run = as_run(run)
    stages = read_stages(run)
    out = [f"RUN {run.url}", "=" * min(WIDTH, max(20, len(run.url) + 4)), ""]
    out += _stage_lines(stages)
    out += _time_lines(stages)
    out += _page_lines(run)
    done = {s.name for s in stages if s.done}
    missing = [st.name for st in (count.STAGE, balance.STAGE) if st.name not in done]
    if missing:
        out += ["", f"Distribution: not available yet; run the '{missing[0]}' stage."]
        return "\n".join(out) + "\n"
    data = load_run(run)
    summ = data.summary(top_k=top)
    b = data.balance
    ht = summ["head_tail"]
    out += ["", "BALANCE",
            f"  t = {_n(data.t)}   seed = {_n(b.get('seed'))}   pool = {_n(b.get('pool'))}   "
            f"matched = {_n(data.matched_texts)}",
            f"  expected kept = {_n(b.get('expected_kept'))}   kept = {_n(b.get('kept'))}"
            + (f"   ({100 * b['kept'] / data.matched_texts:.2f}% of matched)"
               if isinstance(b.get("kept"), (int, float)) and data.matched_texts else ""),
            f"  entries: {ht['matched_entries']:,} matched of {summ['entries']:,} counted;  "
            f"head (count > t) {ht['head_entries']:,}, tail {ht['tail_entries']:,}",
            *(["  (head/tail and coverage here at one t; per language below)"]
              if len(b.get("per_language") or {}) > 1 else []),
            f"  head holds {100 * ht['head_match_share']:.1f}% of {ht['matches']:,} matches;  "
            f"top 1% of entries hold {100 * summ['top_1pct_share']:.1f}%",
            f"  tail coverage: {100 * summ['tail_coverage']:.2f}% of matched entries kept at 100% "
            f"(count <= t); {summ['entries_kept_whole']:,} entries kept whole"]
    per = b.get("per_language") or {}
    if len(per) > 1:  # MetaCLIP 2: a t per language (the figures above use the reference language's t)
        total_in = sum(v.get("rows_in", 0) for v in per.values()) or 1
        total_kept = sum(v.get("rows_kept", 0) for v in per.values()) or 1
        out += ["", "PER LANGUAGE (each language's t keeps the reference language's tail share)",
                f"  {'lang':<8}{'t':>9}{'tail share':>12}{'head':>7}{'tail':>7}{'texts in':>11}{'share':>8}"
                f"{'kept':>9}{'share':>8}"]
        for lang, v in sorted(per.items(), key=lambda kv: -kv[1].get("rows_in", 0)):
            matched = v.get("matched_entries", 0)
            out.append(f"  {_cut(lang, 7):<8}{_n(v['t']):>9}{100 * v.get('tail_proportion', 0):>11.1f}%"
                       f"{v.get('head_entries', 0):>7,}{max(matched - v.get('head_entries', 0), 0):>7,}"
                       f"{v.get('rows_in', 0):>11,}{100 * v.get('rows_in', 0) / total_in:>7.1f}%"
                       f"{v.get('rows_kept', 0):>9,}{100 * v.get('rows_kept', 0) / total_kept:>7.1f}%")
    out += ["", "SOURCES",
            f"  {'source':<16}{'entries':>11}{'matched':>11}{'head':>8}{'matches':>14}{'kept':>13}"
            f"{'kept%':>8}{'tail cov':>10}"]
    for r in summ["sources"]:
        out.append(f"  {_cut(r['source'], 15):<16}{r['entries']:>11,}{r['matched_entries']:>11,}"
                   f"{r['head_entries']:>8,}{r['matches']:>14,}{r['kept']:>13,}"
                   f"{100 * r['kept_share']:>7.1f}%{100 * r['tail_coverage']:>9.1f}%")
    out += ["", f"TOP-{len(summ['top_head'])} HEAD ENTRIES (texts containing the entry: count before "
                f"-> kept after balancing at t = {_n(data.t)})",
            f"  {'#':>3}  {'entry':<34}{'source':<15}{'count':>14}    {'kept':>10}{'kept/count':>12}"]
    for i, r in enumerate(summ["top_head"], 1):
        out.append(f"  {i:>3}  {_cut(r['entry'], 33):<34}{_cut(r['source'], 14):<15}{r['count']:>14,} -> "
                   f"{r['kept']:>10,}{100 * r['kept_fraction']:>11.2f}%")
    for st in stages[[s.name for s in stages].index(balance.STAGE.name) + 1:]:
        if st.summary:
            # in / out / rejected / reconciled and the time are in the STAGES table already
            items = _items(describe(st.summary, skip=IN_STAGE_TABLE + ("wall_seconds", "seconds", "units")))
            if items:
                out += ["", f"{st.name.upper()}"] + _wrap(items)
    return "\n".join(out) + "\n"


def _wrap(items: list[str], indent: str = "  ") -> list[str]:
    lines, cur = [], indent
    for it in items:
        if len(cur) + len(it) + 3 > WIDTH and cur.strip():
            lines.append(cur.rstrip())
            cur = indent
        cur += it + "   "
    if cur.strip():
        lines.append(cur.rstrip())
    return lines


def run(args: argparse.Namespace) -> int:
    if args.top < 0:
        raise InputError("--top must be >= 0")
    from jobs.config import storage_for

    print(format_inspect(RunDir(args.run, storage_for(args.config)), top=args.top), end="")
    return 0
