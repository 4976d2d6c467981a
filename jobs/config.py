"""The run configuration: one YAML file (``yaml.safe_load``) + ``--set key=value`` overrides.

The schema is a tree of dataclasses; each field's ``doc`` metadata is the reference text (the
README's config reference is generated from it, so it cannot drift). Validation names the exact
key: unknown keys (with a did-you-mean), wrong types, missing required values.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from curation.errors import InputError


def _f(default, doc: str, **kw):
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"doc": doc}, **kw)
    return field(default=default, metadata={"doc": doc}, **kw)


@dataclass
class SparkConfig:
    master: str = _f("local[*]", "Spark master: local[*], local[N] or spark://host:port")
    conf: dict = _f({}, "extra Spark settings, e.g. {spark.executor.memory: 4g}")


@dataclass
class StorageConfig:
    endpoint_url: str | None = _f(None, "S3 endpoint (e.g. http://127.0.0.1:9000); default: AWS_ENDPOINT_URL or AWS")
    key: str | None = _f(None, "S3 access key; default: the standard AWS variables/credential chain")
    secret: str | None = _f(None, "S3 secret key; default: the standard AWS variables/credential chain")
    region: str | None = _f(None, "S3 region")

    def options(self) -> dict:
        from jobs.storage import storage_options_from_env

        opts: dict = {}
        if self.endpoint_url:
            opts["endpoint_url"] = self.endpoint_url
        if self.key:
            opts["key"] = self.key
        if self.secret:
            opts["secret"] = self.secret
        if self.region:
            opts.setdefault("client_kwargs", {})["region_name"] = self.region
        return storage_options_from_env(opts)


@dataclass
class PoolConfig:
    path: str = _f("", "pool parquet file or directory (columns url, text, optional uid + pass-through)")
    max_text_bytes: int = _f(65_536, "captions longer than this (UTF-8 bytes) are rejected as text_too_long")
    rows_per_unit: int = _f(250_000, "rows per work unit (a task): row groups are grouped up to this many rows")
    on_bad_file: str = _f("fail", "an unreadable pool parquet file: 'fail' the job or 'skip' it with a reject")
    check_duplicate_uids: bool = _f(True, "reject later repeats of a uid among matched rows as duplicate_uid "
                                    "(pool order decides which is kept; costs one shuffle of the uids)")


@dataclass
class MetadataConfig:
    path: str = _f("", "metadata.json (a JSON list of entry strings; id = position)")


@dataclass
class BalanceConfig:
    t: float | None = _f(20_000.0, "balancing threshold t (20000: the 400M set; 170000: the 2.5B set)")
    target_size: int | None = _f(None, "instead of t: solve the smallest t whose expected kept count reaches this")
    seed: int = _f(0, "seed of the deterministic per-uid draw")
    sweep_points: int = _f(40, "number of t values in balance/t_sweep.json (kept fraction vs t plot)")
    mode: str = _f("metaclip", "'metaclip' (p = min(1, t/count)) or 'random' (a uniform subset of target_size matched rows: the control arm)")


@dataclass
class DownloadConfig:
    image_size: int = _f(256, "img2dataset image_size")
    resize_mode: str = _f("center_crop", "img2dataset resize_mode: no, border, keep_ratio, center_crop")
    min_image_size: int = _f(0, "reject images whose smaller side is below this (img2dataset)")
    processes: int = _f(2, "img2dataset processes_count (local multiprocessing distributor)")
    threads: int = _f(16, "img2dataset thread_count")
    timeout: int = _f(10, "per-request timeout in seconds")
    distributor: str = _f("auto", "auto (pyspark on a cluster master, multiprocessing locally), multiprocessing, pyspark")


@dataclass
class DedupConfig:
    evalsets: str | None = _f(None, "eval_hashes.parquet, its folder or a run dir (from `metacurate evalsets hash`); default: run_dir itself")
    k: int = _f(8, "Hamming distance threshold for near-duplicates")
    phash_mode: str = _f("exact", "pHash path: 'exact' (bit-exact imagehash) or 'fast' (draft-mode JPEG decode)")


@dataclass
class ShardConfig:
    samples_per_shard: int = _f(1000, "samples per WebDataset tar")


@dataclass
class RunConfig:
    run_dir: str = _f("", "the run directory: local path or s3://bucket/prefix (required)")
    spark: SparkConfig = field(default_factory=SparkConfig, metadata={"doc": "Spark settings"})
    storage: StorageConfig = field(default_factory=StorageConfig, metadata={"doc": "object store settings"})
    pool: PoolConfig = field(default_factory=PoolConfig, metadata={"doc": "the input pool"})
    metadata: MetadataConfig = field(default_factory=MetadataConfig, metadata={"doc": "the entry list"})
    balance: BalanceConfig = field(default_factory=BalanceConfig, metadata={"doc": "balancing"})
    download: DownloadConfig = field(default_factory=DownloadConfig, metadata={"doc": "image download"})
    dedup: DedupConfig = field(default_factory=DedupConfig, metadata={"doc": "eval-set near-duplicate removal"})
    shard: ShardConfig = field(default_factory=ShardConfig, metadata={"doc": "WebDataset shards"})
    stages: list = _f(["match", "count", "balance", "download", "dedup", "shard"],
                      "stages `metacurate run` executes, in order")

    def validate(self) -> "RunConfig":
        if not self.run_dir:
            raise InputError("config key `run_dir` is required (a local path or s3://bucket/prefix)")
        if not self.pool.path:
            raise InputError("config key `pool.path` is required")
        if not self.metadata.path:
            raise InputError("config key `metadata.path` is required")
        if self.balance.target_size is not None:
            self.balance.t = None
        if self.balance.t is None and self.balance.target_size is None:
            raise InputError("set `balance.t` or `balance.target_size`")
        if self.pool.on_bad_file not in ("fail", "skip"):
            raise InputError(f"`pool.on_bad_file` must be 'fail' or 'skip', got {self.pool.on_bad_file!r}")
        if self.balance.mode not in ("metaclip", "random"):
            raise InputError(f"`balance.mode` must be 'metaclip' or 'random', got {self.balance.mode!r}")
        if self.balance.mode == "random" and self.balance.target_size is None:
            raise InputError("`balance.mode: random` needs `balance.target_size`")
        if self.dedup.phash_mode not in ("exact", "fast"):
            raise InputError(f"`dedup.phash_mode` must be 'exact' or 'fast', got {self.dedup.phash_mode!r}")
        known = ["match", "count", "balance", "download", "dedup", "shard"]
        for s in self.stages:
            if s not in known:
                raise InputError(f"`stages` has unknown stage {s!r}; known: {known}")
        return self


# --------------------------------------------------------------------------- loading
def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check/coerce ``value`` against annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for a in args:
            ok, v = _type_ok(value, a)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, (int, float)):
            return True, float(value)
        return False, value
    if tp is int:
        return (isinstance(value, int) and not isinstance(value, bool)), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is str:
        return isinstance(value, str), value
    if tp in (dict,) or origin is dict:
        return isinstance(value, dict), value
    if tp in (list,) or origin is list:
        return isinstance(value, list), value
    return True, value


def _type_name(tp: Any) -> str:
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "").replace(" | None", " or null")


def _build(cls, data: Any, prefix: str):
    if not isinstance(data, dict):
        raise InputError(f"config key `{prefix or '<root>'}` must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean `{(prefix + '.' if prefix else '') + close[0]}`?)" if close else ""
            raise InputError(f"unknown config key `{path}`{hint}; known keys here: {sorted(fields)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, path)
            continue
        ok, coerced = _type_ok(value, tp)
        if not ok:
            raise InputError(f"config key `{path}` must be {_type_name(tp)}, got {value!r} "
                             f"({type(value).__name__})")
        kwargs[key] = coerced
    return cls(**kwargs)


def _set_path(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        if node.get(k) is None:
            node[k] = {}
        node = node[k]
        if not isinstance(node, dict):
            raise InputError(f"--set {dotted}: `{k}` is not a section")
    node[keys[-1]] = value


def load_config(path: str | None, overrides: list[str] | None = None, base: dict | None = None) -> RunConfig:
    """Load YAML (safe_load), apply ``key=value`` overrides (values parsed as YAML), validate."""
    data: dict = dict(base or {})
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                loaded = yaml.safe_load(f)
        except FileNotFoundError as exc:
            raise InputError(f"config file not found: {path}") from exc
        except yaml.YAMLError as exc:
            raise InputError(f"config file {path} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise InputError(f"config file {path} must hold a mapping at the top level, got {type(loaded).__name__}")
        data.update(loaded)
    for item in overrides or []:
        if "=" not in item:
            raise InputError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_path(data, key.strip(), value)
    return _build(RunConfig, data, "").validate()


def config_reference() -> str:
    """Markdown table of every key, type, default and doc (for the README)."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(tp):
                walk(tp, key + ".")
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append(f"| `{key}` | {_type_name(tp)} | `{default!r}` | {f.metadata.get('doc', '')} |")

    walk(RunConfig, "")
    return "\n".join(rows)


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


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


def storage_options_for(config_path: str | None) -> dict:
    """fsspec options for a command: the `storage:` section of ``config_path`` when given, else the
    standard AWS_* variables (commands such as `audit` and `evalsets` take an optional --config)."""
    if config_path:
        return load_config(config_path).storage.options()
    from jobs.storage import storage_options_from_env

    return storage_options_from_env()
