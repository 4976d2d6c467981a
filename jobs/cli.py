"""The `metacurate` command line.

Every command lives in its own module under `jobs/commands/` exposing
``add_arguments(parser)`` (or ``add_arguments_for(name, parser)`` when one module serves several
commands) and ``run(args) -> int``; the registry below lists them in pipeline order.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from curation.errors import InputError
from jobs.stages.base import StageError

# name -> (module, one-line help), in the order of --help; the stages (from the registry) follow `run`.
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("jobs.commands.quickstart", "offline end-to-end demo: metadata -> ... -> eval -> report"),
    "curate": ("jobs.commands.curate", "metadata -> match -> count -> balance over a pool parquet, by flags"),
    "run": ("jobs.commands.stages", "run every stage of a config (skips stages already complete)"),
    "evalsets": ("jobs.commands.evalsets", "hash evaluation image sets for dedup"),
    "audit": ("jobs.commands.audit", "train/test overlap audit page (audit/index.html)"),
    "report": ("jobs.commands.report", "distribution report of a run (report/index.html + PNGs)"),
    "inspect": ("jobs.commands.inspect", "terminal summary of a run directory"),
    "train": ("jobs.commands.train", "train the compact CLIP on WebDataset shards"),
    "eval": ("jobs.commands.evaluate", "zero-shot / retrieval / linear-probe evaluation of a checkpoint"),
    "export": ("jobs.commands.export", "export a checkpoint for open_clip (model config, weights, tokenizer)"),
    "scaling": ("jobs.commands.scaling", "fit scaling laws E = beta * C^alpha across runs"),
    "experiment": ("jobs.commands.experiment", "experiments, e.g. balance-vs-random"),
}


def all_commands() -> dict[str, tuple[str, str, str | None]]:
    """Every command as ``(module, help, description)``: the ones above, with one per stage of the
    registry inserted after `run` (described by the stage module's own docstring)."""
    from jobs.stages import STAGES

    out: dict[str, tuple[str, str, str | None]] = {}
    for name, (module, help_text) in COMMANDS.items():
        out[name] = (module, help_text, None)
        if name == "run":
            for stage in STAGES:
                doc = (sys.modules[type(stage).__module__].__doc__ or stage.help).strip()
                out[stage.name] = ("jobs.commands.stages", f"stage: {stage.help}",
                                   f"{doc}\n\nRun it alone: metacurate {stage.name} --config run.yaml "
                                   "(its upstream stages must be complete).")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metacurate",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "MetaCLIP-style curation on Spark: metadata -> match -> count -> balance -> download\n"
            "-> dedup -> shard, plus a compact CLIP trainer and evaluator."
        ),
        epilog="Run `metacurate COMMAND --help` for a command's options.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (module, help_text, description) in all_commands().items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=description or (mod.__doc__ or help_text).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if hasattr(mod, "add_arguments_for"):
            mod.add_arguments_for(name, p)
        else:
            mod.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("py4j", "matplotlib", "PIL", "botocore", "s3fs", "urllib3", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.command:
        parser.print_help()
        return 2
    mod = importlib.import_module(args._module)
    try:
        return int(mod.run(args) or 0)
    except InputError as exc:  # errors that tell the user what to change
        print(f"metacurate {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except StageError as exc:  # a stage's own check failed: nothing was marked complete
        print(f"metacurate {args.command}: failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
