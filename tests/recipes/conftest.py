"""Tiny models shared by the recipe runs (built once, the way the recipes build them)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.recipes.launch import RECIPES


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """A folder with the recipes' tiny policy and reward models already built (``recipes/tiny_models.py``)."""
    sys.path.insert(0, str(RECIPES))
    try:
        from tiny_models import build_tiny_models
    finally:
        sys.path.remove(str(RECIPES))
    root = tmp_path_factory.mktemp("tiny-models")
    build_tiny_models(root)
    return root
