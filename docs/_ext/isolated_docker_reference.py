"""Sphinx directives that generate reference tables from the code, so the docs cannot drift.

``.. isolated-docker-options::`` renders ``pytest_isolated_docker.settings.OPTIONS`` (flag,
environment variable, ini key, default, help); ``.. isolated-docker-fixtures::`` renders the
plugin's fixtures (name, scope, type, docstring); ``.. isolated-docker-cli::`` renders the
``--help`` of the companion command and its subcommands; ``.. isolated-docker-unreleased::``
renders the news fragments in ``changelog.d/`` not yet released (``towncrier build --draft``).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

import pytest_isolated_docker
from pytest_isolated_docker import cli, fixtures, plugin
from pytest_isolated_docker.settings import OPTIONS, OptionSpec

# The order in which fixtures are documented: the expensive one first, then the per-test ones.
FIXTURE_ORDER = ("docker_daemon", "docker_test_daemon", "docker_client", "docker_env")


def _literal(text: str) -> str:
    """Inline code in reST, escaping nothing but what the help texts contain."""
    return f"``{text}``" if text else ""


def _help_rst(text: str) -> str:
    """Help texts use Markdown-style `code`; reST needs double backquotes. Flags become code."""
    text = re.sub(r"(?<!`)`([^`]+)`(?!`)", r"``\1``", text)
    return re.sub(r"(?<![`\w-])(--[a-z][a-z-]*(?:=[\w.:/-]+)?)", r"``\1``", text)


def _default(spec: OptionSpec) -> str:
    if spec.default is None:
        return "see description"
    if isinstance(spec.default, bool):
        return _literal(str(spec.default).lower())
    if isinstance(spec.default, float) and spec.default.is_integer():
        return _literal(str(int(spec.default)))
    if spec.default in ((), ""):
        return "none"
    return _literal(str(spec.default))


def _flag(spec: OptionSpec) -> str:
    if spec.is_flag:
        return _literal(spec.flag)
    metavar = spec.metavar or "{" + ",".join(spec.choices) + "}"
    text = _literal(f"{spec.flag}={metavar}")
    return text + " (repeatable)" if spec.is_list else text


def _env(spec: OptionSpec) -> str:
    text = _literal(spec.env)
    return text + " (comma-separated)" if spec.is_list else text


def _ini(spec: OptionSpec) -> str:
    text = _literal(spec.ini)
    return text + " (one per line)" if spec.is_list else text


def options_rows() -> list[list[list[str]]]:
    """One row per option: [flag, environment, ini key], [default], [help] (cells as lines)."""
    return [
        [
            [f"| {_flag(spec)}", f"| {_env(spec)}", f"| ini {_ini(spec)}"],
            [_default(spec)],
            [_help_rst(spec.help)],
        ]
        for spec in OPTIONS
    ]


def _list_table(header: list[str], rows: list[list[list[str]]], widths: str) -> list[str]:
    lines = [".. list-table::", "   :header-rows: 1", f"   :widths: {widths}", ""]
    for row in [[[cell] for cell in header], *rows]:
        for index, cell in enumerate(row):
            bullet = "   * - " if index == 0 else "     - "
            lines.append(bullet + cell[0])
            lines.extend("       " + line for line in cell[1:])
    return lines


class _GeneratedRst(SphinxDirective):
    has_content = False

    def lines(self) -> list[str]:
        raise NotImplementedError

    def run(self) -> list[nodes.Node]:
        container = nodes.container()
        source = self.get_source_info()[0] or "<generated>"
        self.state.nested_parse(StringList(self.lines(), source=source), 0, container)
        return list(container.children)


class OptionsTable(_GeneratedRst):
    """Every option: command line > environment > ini > default."""

    def lines(self) -> list[str]:
        header = ["Command line, environment, ini", "Default", "What it does"]
        return _list_table(header, options_rows(), "40 12 48")


def _find_fixture(name: str) -> Any:
    """The fixture definition named ``name``: in the plugin module or any module of the package."""
    modules: list[Any] = [fixtures, plugin]
    for info in pkgutil.iter_modules(pytest_isolated_docker.__path__):
        modules.append(importlib.import_module(f"pytest_isolated_docker.{info.name}"))
    for module in modules:
        candidate = getattr(module, name, None)
        if hasattr(candidate, "_fixture_function_marker"):
            return candidate
    raise LookupError(f"no fixture {name!r} in the pytest_isolated_docker package")


def fixture_entries() -> list[tuple[str, str, str, str]]:
    """(name, scope, return annotation, docstring) of each of the plugin's fixtures."""
    entries = []
    for name in FIXTURE_ORDER:
        definition = _find_fixture(name)
        function = definition._get_wrapped_function()
        scope = definition._fixture_function_marker.scope
        returns = str(inspect.signature(function).return_annotation)
        # A yield fixture gives what it yields.
        returns = re.sub(r"^(?:Iterator|Generator)\[([^,\]]+(?:\[[^\]]*\])?).*\]$", r"\1", returns)
        docstring = inspect.cleandoc(function.__doc__ or "")
        entries.append((name, str(scope), returns, docstring))
    return entries


class FixturesReference(_GeneratedRst):
    """One entry per fixture, its docstring taken from pytest_isolated_docker/fixtures.py."""

    def lines(self) -> list[str]:
        public = {
            name
            for name in dir(fixtures)
            if hasattr(getattr(fixtures, name), "_fixture_function_marker")
        }
        missing = sorted(public - set(FIXTURE_ORDER))
        if missing:
            raise self.error(f"fixtures not documented (add them to FIXTURE_ORDER): {missing}")
        try:
            entries = fixture_entries()
        except LookupError as exc:
            raise self.error(str(exc)) from None
        lines: list[str] = []
        for name, scope, returns, docstring in entries:
            lines += [f".. fixture:: {name}", ""]
            lines += [f"   *Fixture, scope* ``{scope}``, *gives* ``{returns}``.", ""]
            lines += ["   " + line if line else "" for line in docstring.splitlines()]
            lines.append("")
        return lines


def cli_help(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        cli.main([*argv, "--help"])
    return out.getvalue().replace("usage: __main__", "usage: pytest-isolated-docker")


class CliHelp(_GeneratedRst):
    """``pytest-isolated-docker --help`` and each subcommand's, as the program prints them."""

    def lines(self) -> list[str]:
        lines: list[str] = []
        for argv in ((), ("doctor",), ("build-image",), ("prune",)):
            command = " ".join(["pytest-isolated-docker", *argv, "--help"])
            lines += [".. code-block:: text", "", f"   $ {command}"]
            lines += ["   " + line if line else "" for line in cli_help(*argv).splitlines()]
            lines.append("")
        return lines


ROOT = Path(__file__).resolve().parents[2]


def unreleased_changes() -> list[str]:
    """The next release's notes as towncrier would write them, titled as unreleased."""
    version = pytest_isolated_docker.__version__
    result = subprocess.run(
        [sys.executable, "-m", "towncrier", "build", "--draft", "--version", version],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"towncrier build --draft failed:\n{result.stderr}")
    lines = result.stdout.strip("\n").splitlines()
    if len(lines) >= 2 and lines[0].startswith(version) and set(lines[1]) == {"-"}:
        title = f"{version} (unreleased)"
        lines[:2] = [title, "-" * len(title)]
    return lines


class Unreleased(SphinxDirective):
    """The fragments of changelog.d/, rendered as the next version's section."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        try:
            lines = unreleased_changes()
        except RuntimeError as exc:
            raise self.error(str(exc)) from None
        container = nodes.section()
        source = self.get_source_info()[0] or "<towncrier>"
        nested_parse_with_titles(self.state, StringList(lines, source=source), container)
        return list(container.children)


def setup(app: Sphinx) -> dict[str, Any]:
    # `.. fixture:: name` entries, and :fixture:`name` references to them from any page.
    app.add_object_type("fixture", "fixture", indextemplate="pair: %s; fixture")
    app.add_directive("isolated-docker-options", OptionsTable)
    app.add_directive("isolated-docker-fixtures", FixturesReference)
    app.add_directive("isolated-docker-cli", CliHelp)
    app.add_directive("isolated-docker-unreleased", Unreleased)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
