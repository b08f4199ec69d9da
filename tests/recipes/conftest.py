"""Tiny models shared by the recipe runs (built once, the way the recipes build them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tiny_models import build_tiny_models


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """A folder with the recipes' tiny policy and reward models already built
    (:mod:`tests.support.tiny_models`)."""
    root = tmp_path_factory.mktemp("tiny-models")
    build_tiny_models(root)
    return root
