"""Reading the PHP literals that frameworks cache their configuration in.

Laravel's `bootstrap/cache/config.php` and Symfony's `.env.local.php` are written by
`var_export`: `<?php return array ( 'key' => 'value', ... );`. This reads exactly that
literal syntax (array(...) and [...], strings, numbers, true/false/null) and nothing
else; objects and class constants that var_export can emit become `Opaque`. Anything
outside that grammar is a PhpSyntaxError, so a hand-edited file that would need PHP to
evaluate is never guessed at. Nothing is ever executed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["Opaque", "PhpSyntaxError", "parse_php_return"]


class PhpSyntaxError(ValueError):
    """Not the literal PHP var_export writes; `line` is where reading stopped."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True)
class Opaque:
    """A value that only PHP can evaluate (an object, a class constant)."""

    text: str


_TOKEN = re.compile(
    r"""
    (?P<space>\s+|//[^\n]*|\#[^\n]*|/\*.*?\*/)
  | (?P<open_tag><\?php\b|\?>\s*\Z)
  | (?P<sq>'(?:[^'\\]|\\.)*')
  | (?P<dq>"(?:[^"\\]|\\.)*")
  | (?P<number>-?(?:0[xX][0-9a-fA-F]+|\d+\.\d*(?:[eE][-+]?\d+)?|\.\d+|\d+(?:[eE][-+]?\d+)?))
  | (?P<name>\\?[A-Za-z_][A-Za-z0-9_]*(?:\\[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<arrow>=>)
  | (?P<double_colon>::)
  | (?P<punct>[()\[\],;=])
    """,
    re.VERBOSE | re.DOTALL,
)
_DQ_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "v": "\v", "f": "\f", "e": "\x1b", "0": "\0"}


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str, int]] = []
        line, pos = 1, 0
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if match is None:
                raise PhpSyntaxError(f"unexpected {text[pos : pos + 20]!r}", line)
            kind = match.lastgroup or ""
            if kind not in ("space", "open_tag"):
                self.tokens.append((kind, match.group(), line))
            line += match.group().count("\n")
            pos = match.end()
        self.tokens.append(("end", "", line))
        self.index = 0

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.index]

    def take(self, kind: str | None = None, text: str | None = None) -> tuple[str, str, int]:
        token = self.tokens[self.index]
        if (kind is not None and token[0] != kind) or (text is not None and token[1] != text):
            wanted = text or kind
            raise PhpSyntaxError(f"expected {wanted}, found {token[1] or 'the end'!r}", token[2])
        self.index += 1
        return token

    def value(self) -> Any:
        kind, text, line = self.peek()
        if kind == "sq":
            self.index += 1
            return re.sub(r"\\([\\'])", r"\1", text[1:-1])
        if kind == "dq":
            self.index += 1
            return _double_quoted(text[1:-1], line)
        if kind == "number":
            self.index += 1
            return int(text, 0) if re.fullmatch(r"-?(0[xX][0-9a-fA-F]+|\d+)", text) else float(text)
        if kind == "punct" and text == "[":
            self.index += 1
            return self.items("]")
        if kind == "punct" and text == "(":
            # var_export writes stdClass as `(object) array(...)`.
            self.index += 1
            cast = self.take("name")[1]
            self.take("punct", ")")
            inner = self.value()
            return Opaque(f"({cast}) {inner!r}")
        if kind == "name":
            self.index += 1
            lowered = text.lower()
            if lowered in ("true", "false"):
                return lowered == "true"
            if lowered == "null":
                return None
            if lowered == "array" and self.peek()[1] == "(":
                self.index += 1
                return self.items(")")
            if self.peek()[0] == "double_colon":
                self.index += 1
                member = self.take("name")[1]
                if member == "__set_state" and self.peek()[1] == "(":
                    self.index += 1
                    inner = self.value()
                    self.take("punct", ")")
                    return Opaque(f"{text}::__set_state({inner!r})")
                return Opaque(f"{text}::{member}")
            raise PhpSyntaxError(f"{text} is code, not a literal", line)
        raise PhpSyntaxError(f"unexpected {text or 'end of file'!r}", line)

    def items(self, close: str) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        next_index = 0
        while self.peek()[1] != close:
            first = self.value()
            if self.peek()[0] == "arrow":
                self.index += 1
                if not isinstance(first, (str, int)):
                    raise PhpSyntaxError("an array key must be a string or number", self.peek()[2])
                key: Any = first
                result[key] = self.value()
                if isinstance(key, int):
                    next_index = max(next_index, key + 1)
            else:
                result[next_index] = first
                next_index += 1
            if self.peek()[1] == ",":
                self.index += 1
            elif self.peek()[1] != close:
                token = self.peek()
                raise PhpSyntaxError(f"expected , or {close}, found {token[1]!r}", token[2])
        self.index += 1
        return result


def _double_quoted(body: str, line: int) -> str:
    if re.search(r"(?<!\\)\$[A-Za-z_{]", body):
        raise PhpSyntaxError("a double-quoted string with a $variable is code", line)
    return re.sub(
        r"\\(.)",
        lambda m: _DQ_ESCAPES.get(m.group(1), m.group(1) if m.group(1) in '\\"$' else m.group(0)),
        body,
    )


def parse_php_return(text: str) -> Any:
    """The value of a `<?php return <literal>;` file. Raises PhpSyntaxError."""
    try:
        return _parse(text)
    except RecursionError:
        raise PhpSyntaxError("arrays nested too deeply", 0) from None


def _parse(text: str) -> Any:
    parser = _Parser(text)
    if parser.peek()[0] == "name" and parser.peek()[1].lower() == "declare":
        # declare(strict_types=1); is harmless and common at the top of such files.
        while parser.peek()[1] != ";" and parser.peek()[0] != "end":
            parser.index += 1
        parser.take("punct", ";")
    token = parser.peek()
    if not (token[0] == "name" and token[1].lower() == "return"):
        raise PhpSyntaxError(f"expected `return`, found {token[1] or 'the end'!r}", token[2])
    parser.index += 1
    value = parser.value()
    parser.take("punct", ";")
    if parser.peek()[0] != "end":
        raise PhpSyntaxError(
            f"unexpected {parser.peek()[1]!r} after the returned value", parser.peek()[2]
        )
    return value
