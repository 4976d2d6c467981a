import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import shardgen


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory) -> Path:
    """Four good shards of 32 generated shape images each (shared, read-only)."""
    directory = tmp_path_factory.mktemp("shards")
    shardgen.write_shards(directory, n_shards=4, per_shard=32, seed=0)
    return directory


@pytest.fixture()
def make_shards():
    return shardgen
