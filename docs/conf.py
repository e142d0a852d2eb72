"""Sphinx configuration. Built by ``make docs`` with warnings as errors (``-W --keep-going``)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))

import pytest_isolated_docker  # noqa: E402

project = "pytest-isolated-docker"
author = "pytest-isolated-docker developers"
copyright = "2026, pytest-isolated-docker developers"
release = pytest_isolated_docker.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "isolated_docker_reference",
]
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}  # offline builds: no inventories

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
smartquotes_action = "qe"  # quotes and ellipses, but keep "--" as typed (command-line flags)

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_class_signature = "mixed"

try:
    import furo  # noqa: F401
except ImportError:  # pragma: no cover - the test extra installs it
    html_theme = "alabaster"
else:
    html_theme = "furo"
html_title = f"pytest-isolated-docker {release}"
html_static_path: list[str] = []
