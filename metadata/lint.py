"""Lint an entry list against MetaCLIP's matching rule (ARCHITECTURE.md, "Matching"), so the report says which
entries are dead weight.

Under parity normalisation an entry ``e`` matches when ``" " + e + " "`` occurs in the normalised
text. Hence:

* ``wrapped_char``: ``e`` contains one of ``WRAPPED_CHARS`` without a space each side of it; the
  text always has that character wrapped in spaces, so it can never match (``"a . b"`` can:
  ``"a.b"`` in a caption becomes ``" a . b "``). The test is ``curation.matching.never_matches``.
* ``control_char``: ``e`` contains a tab, newline or CR; the text never does -> can never match.
* ``empty``: the empty entry (would match every single space) -> rejected.
* ``edge_space`` / ``double_space``: leading/trailing or doubled spaces; such an entry only
  matches texts with the same irregular spacing (alt-texts almost never have it).
* ``one_char``: a single character; matches, but is mostly noise.
* ``duplicate``: the same string again later in the list (ids are positions, so both stay). A
  list of several languages is linted per language (the stage passes each language's part):
  the same string in two languages is two entries on purpose, not a duplicate.
"""
from __future__ import annotations

from typing import Sequence

from curation.matching import SPACED_CHARS, WRAPPED_CHARS, never_matches

NEVER_MATCH = ("wrapped_char", "control_char", "empty")
FINDINGS = NEVER_MATCH + ("edge_space", "double_space", "one_char", "duplicate")


def entry_findings(entry: str, rule: str = "metaclip1") -> list[str]:
    """The lint findings (names from ``FINDINGS`` minus ``duplicate``) of one entry under ``rule``."""
    found = []
    if entry and any(c in entry for c in WRAPPED_CHARS) and not any(c in entry for c in SPACED_CHARS) \
            and never_matches(entry, rule):
        found.append("wrapped_char")
    if any(c in entry for c in SPACED_CHARS):
        found.append("control_char")
    if entry == "":
        found.append("empty")
    elif entry != entry.strip(" "):
        found.append("edge_space")
    if "  " in entry:
        found.append("double_space")
    if len(entry) == 1:
        found.append("one_char")
    return found


def lint_entries(entries: Sequence[str], sources: Sequence[str] | None = None,
                 max_examples: int = 20, rule: str = "metaclip1", ids: Sequence[int] | None = None) -> dict:
    """Counts and first examples per finding, also split by source when ``sources`` is given.

    ``ids``: the entries' ids in the whole list when ``entries`` is one language's part of it
    (examples name those ids; default: the positions in ``entries``)."""
    counts = {name: 0 for name in FINDINGS}
    examples: dict[str, list] = {name: [] for name in FINDINGS}
    by_source: dict[str, dict[str, int]] = {}
    never = 0
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        found = entry_findings(entry, rule)
        if entry in seen:
            found.append("duplicate")
        seen.add(entry)
        if any(f in NEVER_MATCH for f in found):
            never += 1
        for name in found:
            counts[name] += 1
            if len(examples[name]) < max_examples:
                examples[name].append({"entry_id": i if ids is None else int(ids[i]), "entry": entry})
            if sources is not None:
                per = by_source.setdefault(sources[i], {})
                per[name] = per.get(name, 0) + 1
    report = {"entries": len(entries), "never_match": never, "counts": counts, "examples": examples}
    if sources is not None:
        report["by_source"] = {s: dict(sorted(c.items())) for s, c in sorted(by_source.items())}
    return report
