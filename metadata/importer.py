"""Import an existing ``metadata.json`` (e.g. MetaCLIP's released 500k list) as our metadata.

The list is validated by ``curation.matching.load_metadata_json`` (a JSON list of non-empty
strings), linted, and written like a built list with source ``import`` and no score (null): the
ids stay the positions of the original list, so results stay comparable with MetaCLIP's.
"""
from __future__ import annotations

import logging

from curation.matching import entries_fingerprint, load_metadata_json
from metadata.merge import build_report, fingerprint, write_outputs

log = logging.getLogger(__name__)


def import_metadata(path: str, out_dir: str) -> dict:
    """Validate + lint ``path`` and write ``out_dir``; return the report."""
    entries = load_metadata_json(path)
    merged = [(e, "import", None) for e in entries]
    report = build_report(merged, {"import": {"candidates": len(entries), "kept": len(entries)}},
                          {"imported_from": path})
    summary = {"stage": "metadata", "in": len(entries), "out": len(entries), "rejected": {}}
    write_outputs(out_dir, merged, report, summary,
                  fingerprint({"import": entries_fingerprint(entries)}))
    lint = report["lint"]
    log.info("imported %d entries from %s (%d can never match, %d duplicates)",
             len(entries), path, lint["never_match"], lint["counts"]["duplicate"])
    return report
