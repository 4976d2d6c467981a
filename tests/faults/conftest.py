"""Fixtures of the fault tests: the image tests' loopback HTTP server and generated images
(``tests/images/conftest.py``, loaded by path: with ``--import-mode=importlib`` a test folder is
no package to import from)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def image_helpers():
    path = Path(__file__).resolve().parents[1] / "images" / "conftest.py"
    spec = importlib.util.spec_from_file_location("metacurate_tests_image_helpers_faults", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def http_server(image_helpers):
    srv = image_helpers.Server()
    yield srv
    srv.close()


@pytest.fixture(scope="session")
def natural(image_helpers):
    return image_helpers.natural_image
