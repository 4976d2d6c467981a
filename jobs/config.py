"""The run configuration: one YAML file (``yaml.safe_load``) plus ``--set key=value`` overrides.

``RunConfig`` is assembled from the common sections below and one section per registered stage
(``Stage.section`` / ``Stage.Config``), so a stage's settings are declared in the stage's own
module. Each field's doc is the reference text: the README's configuration table is generated
from it (``python -m jobs.config --update-readme README.md``; a test fails when it is stale) and
the ``curate`` flags are made from the same fields.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import yaml

from curation.errors import InputError
from curation.rundir import RunDir
from curation.settings import SettingError, build, reference_rows, section, set_path, setting
from curation.storage import Storage


@dataclass
class SparkConfig:
    master: str = setting("local[*]", "Spark master: local[*], local[N] or spark://host:port", flag="--master")
    conf: dict = setting({}, "extra Spark settings, e.g. {spark.executor.memory: 4g}")


@dataclass
class StorageConfig:
    endpoint_url: str | None = setting(None, "S3 endpoint (e.g. http://127.0.0.1:9000); default: "
                                             "AWS_ENDPOINT_URL or AWS")
    key: str | None = setting(None, "S3 access key; default: the standard AWS variables/credential chain")
    secret: str | None = setting(None, "S3 secret key; default: the standard AWS variables/credential chain")
    region: str | None = setting(None, "S3 region")

    def storage(self) -> Storage:
        """The run's storage: these settings, else what the environment says."""
        opts: dict = {}
        if self.endpoint_url:
            opts["endpoint_url"] = self.endpoint_url
        if self.key:
            opts["key"] = self.key
        if self.secret:
            opts["secret"] = self.secret
        if self.region:
            opts.setdefault("client_kwargs", {})["region_name"] = self.region
        return Storage.from_env(opts)


def _make_run_config() -> type:
    from jobs.stages import STAGES

    fields: list[tuple[str, Any, Any]] = [
        ("run_dir", str, setting("", "the run directory: local path or s3://bucket/prefix (required)", flag="--out")),
        ("spark", SparkConfig, section(SparkConfig, "Spark settings")),
        ("storage", StorageConfig, section(StorageConfig, "object store settings")),
    ]
    for stage in STAGES:
        if stage.section:
            fields.append((stage.section, stage.Config, section(stage.Config, stage.section_doc)))
        for name, (cls, doc) in stage.extra_sections.items():
            fields.append((name, cls, section(cls, doc)))
    fields.append(("max_failed_fraction", float, setting(
        0.2, "a stage fails (exit 1, no _SUCCESS) when more than this share of its input is rejected for a "
             "failure of the tool or the infrastructure (unreadable files, failed download shards, connection "
             "errors...; each stage lists its reasons) rather than by a curation decision", minimum=0,
        finite=True)))
    all_stages = [s.name for s in STAGES]
    fields.append(("stages", list, setting(all_stages, "stages `metacurate run` executes (in pipeline order; "
                                                      "incomplete upstream stages they need run too)")))

    def validate(self) -> None:
        if not self.run_dir:
            raise SettingError("run_dir", "is required (a local path or s3://bucket/prefix)")
        for name in self.stages:
            if name not in all_stages:
                raise SettingError("stages", f"has unknown stage {name!r}; the stages are {all_stages}")

    cls = dataclasses.make_dataclass("RunConfig", fields, namespace={"validate": validate})
    cls.__module__ = __name__
    cls.__doc__ = "Every setting of a run (see the README's configuration reference)."
    return cls


RunConfig = _make_run_config()


def load_config(path: str | None, overrides: list[str] | None = None, base: dict | None = None,
                values: dict[str, Any] | None = None) -> Any:
    """Load YAML (safe_load), apply ``values`` (dotted key -> value, e.g. from flags) and ``key=value``
    overrides (values parsed as YAML), validate; errors name the key."""
    data: dict = dict(base or {})
    if path:
        data.update(_read_yaml(path))
    for key, value in (values or {}).items():
        set_path(data, key, value)
    for item in overrides or []:
        if "=" not in item:
            raise InputError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        try:
            set_path(data, key.strip(), value)
        except InputError as exc:
            raise InputError(f"--set {exc}") from None
    return build(RunConfig, data)


def _read_yaml(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            loaded = yaml.safe_load(f)
    except FileNotFoundError as exc:
        raise InputError(f"config file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise InputError(f"config file {path} is not valid YAML: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise InputError(f"config file {path} must hold a mapping at the top level, got {type(loaded).__name__}")
    return loaded


def storage_for(config_path: str | None) -> Storage:
    """The storage of a command that takes an optional ``--config``: that file's ``storage:``
    section (nothing else of it is needed or checked), else the environment."""
    if not config_path:
        return Storage.from_env()
    section_data = _read_yaml(config_path).get("storage") or {}
    return build(StorageConfig, section_data, "storage").storage()


def run_dir_of(cfg: Any) -> RunDir:
    return RunDir(cfg.run_dir, cfg.storage.storage())


def snapshot(cfg: Any) -> dict:
    """The config as written into ``RUN/config.json`` (keys and secrets masked)."""
    d = dataclasses.asdict(cfg)
    d["storage"] = {k: ("***" if k in ("key", "secret") and v else v) for k, v in d["storage"].items()}
    return d


def config_reference() -> str:
    """Markdown table of every key, type, default and doc (for the README)."""
    return "\n".join(reference_rows(RunConfig))


def update_readme(path: str) -> bool:
    """Rewrite the generated block of the README; True if it changed."""
    start, end = "<!-- config-reference:start -->", "<!-- config-reference:end -->"
    with open(path, encoding="utf-8") as f:
        text = f.read()
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{start}\n{config_reference()}\n{end}{tail}"
    if new != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
    return new != text


if __name__ == "__main__":  # python -m jobs.config [--update-readme README.md]
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--update-readme":
        print("updated" if update_readme(sys.argv[2]) else "up to date")
    else:
        print(config_reference())
