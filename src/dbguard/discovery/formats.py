"""Parsing the file formats projects keep database settings in, with errors that name
the file and line (a DiscoveryError, so the command is denied with a clear message
instead of dbguard guessing or crashing)."""

from __future__ import annotations

import json
import re
import tomllib
import xml.etree.ElementTree as ET
from typing import Any, NoReturn
from xml.parsers import expat

import yaml

from dbguard.discovery.envfile import DiscoveryError

__all__ = ["parse_json", "parse_properties", "parse_toml", "parse_xml", "parse_yaml"]


def _fail(name: str, line: int | None, problem: str, fix: str) -> NoReturn:
    where = f"{name}, line {line}" if line else name
    raise DiscoveryError(f"{where}: {problem}", fix)


def parse_xml(text: str, name: str) -> ET.Element:
    """The root element. Entity declarations are refused: a config file needs none, and
    they are how XML is made to expand without bound."""
    # A first pass with expat itself, which gives line numbers and lets a handler refuse
    # every entity declaration; the tree is only built from a document that passed.
    scanner = expat.ParserCreate(namespace_separator="}")  # namespace-aware, like ElementTree

    def no_entities(entity_name: str, *_: object) -> None:
        raise _EntityDeclared(entity_name)

    scanner.EntityDeclHandler = no_entities
    try:
        scanner.Parse(text, True)
    except expat.ExpatError as err:
        problem = expat.ErrorString(err.code) if err.code else str(err)
        _fail(name, err.lineno, f"not valid XML: {problem}", "fix the XML so it can be read")
    except _EntityDeclared as err:
        _fail(
            name,
            scanner.CurrentLineNumber,
            f"not accepted: it declares the entity {err.args[0]!r}",
            "remove the DOCTYPE and its entity declarations",
        )
    try:
        return ET.fromstring(text)  # noqa: S314 - checked above: well-formed, no entities
    except ET.ParseError as err:  # the scan above should have caught it; never crash
        _fail(name, err.position[0], f"not valid XML: {err}", "fix the XML so it can be read")


class _EntityDeclared(Exception):
    pass


def parse_yaml(text: str, name: str) -> Any:
    """safe_load: plain data only; anchors, aliases and `<<` merge keys work."""
    try:
        return yaml.safe_load(text)
    except RecursionError:
        _fail(name, None, "nested too deeply to be a configuration file", "fix the YAML")
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = err.problem or err.context or "invalid YAML"
        _fail(name, line, f"not valid YAML: {problem}", "fix the YAML")
    except yaml.YAMLError as err:
        _fail(name, None, f"not valid YAML: {err}", "fix the YAML")


def parse_toml(text: str, name: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except RecursionError:
        _fail(name, None, "nested too deeply to be a configuration file", "fix the TOML")
    except tomllib.TOMLDecodeError as err:
        message = str(err)
        at = re.search(r"\(at line (\d+), column \d+\)", message)
        problem = re.sub(r"\s*\(at line \d+, column \d+\)", "", message)
        _fail(name, int(at.group(1)) if at else None, f"not valid TOML: {problem}", "fix the TOML")


def parse_json(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        _fail(name, None, "nested too deeply to be a configuration file", "fix the JSON")
    except json.JSONDecodeError as err:
        _fail(name, err.lineno, f"not valid JSON: {err.msg}", "fix the JSON")


def parse_properties(text: str, name: str) -> dict[str, tuple[str, int]]:
    """A Java .properties file (Flyway's flyway.conf, liquibase.properties): `key=value`
    or `key: value`, `#`/`!` comments, `\\` line continuations. Values with their line."""
    values: dict[str, tuple[str, int]] = {}
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        number = index + 1
        line = lines[index].lstrip()
        index += 1
        if not line or line[0] in "#!":
            continue
        while line.endswith("\\") and not line.endswith("\\\\") and index < len(lines):
            line = line[:-1] + lines[index].lstrip()
            index += 1
        match = re.match(r"((?:[^\s=:\\]|\\.)+)\s*[=:]?\s*(.*)$", line)
        if match is None:
            _fail(name, number, f"cannot parse {line[:80]!r}", "write key=value")
        key = re.sub(r"\\(.)", r"\1", match.group(1))
        values[key] = (match.group(2).rstrip(), number)
    return values
