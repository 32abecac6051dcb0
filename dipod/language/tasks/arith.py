"""A safe parser for the arithmetic answers of Countdown: numbers, + - * /, parentheses. Never evaluates text.

Recursive descent over a bounded token list with exact rational arithmetic (``fractions.Fraction``):

    expr   := term (('+' | '-') term)*
    term   := factor (('*' | '/') factor)*
    factor := NUMBER | '(' expr ')'

NUMBER is a run of ASCII digits without a leading zero (``0`` and ``00`` are numbers, ``03`` is not: as
in Python, whose ``eval`` the release uses). Anything else makes ``evaluate`` return None: unary minus
(``-3+5``), ``**``, ``//``, decimals (``2.5``), non-ASCII digits, letters and names, ``=``, over-long input,
deep nesting, huge numbers, division by zero. It never raises and never calls ``eval``.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

MAX_CHARS = 200
"""Longest expression accepted."""
MAX_DIGITS = 6
"""Longest number literal accepted."""
MAX_DEPTH = 16
"""Deepest parenthesis nesting accepted (bounds the recursion)."""
MAX_MAGNITUDE = 10**12
"""Largest numerator or denominator an intermediate value may reach."""


class _Reject(Exception):
    """Internal: the expression is not acceptable."""


@dataclass(frozen=True)
class Parsed:
    """An accepted expression: its exact value and the number literals it uses, in order."""

    value: Fraction
    numbers: tuple[int, ...]


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "+-*/()":
            tokens.append(ch)
            i += 1
        elif ch in "0123456789":
            j = i
            while j < len(text) and text[j] in "0123456789":
                j += 1
            if j - i > MAX_DIGITS:
                raise _Reject
            if text[i] == "0" and text[i:j].strip("0"):
                raise _Reject  # a leading zero (03): Python's eval rejects it, so the release scores it wrong
            tokens.append(text[i:j])
            i = j
        else:
            raise _Reject
    return tokens


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.numbers: list[int] = []

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise _Reject
        self.pos += 1
        return token

    def expr(self, depth: int) -> Fraction:
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term(depth)
            value = _checked(value + rhs if op == "+" else value - rhs)
        return value

    def term(self, depth: int) -> Fraction:
        value = self.factor(depth)
        while self.peek() in ("*", "/"):
            op = self.take()
            rhs = self.factor(depth)
            if op == "/" and rhs == 0:
                raise _Reject
            value = _checked(value * rhs if op == "*" else value / rhs)
        return value

    def factor(self, depth: int) -> Fraction:
        token = self.take()
        if token == "(":
            if depth >= MAX_DEPTH:
                raise _Reject
            value = self.expr(depth + 1)
            if self.take() != ")":
                raise _Reject
            return value
        if token.isdigit():
            self.numbers.append(int(token))
            return Fraction(int(token))
        raise _Reject


def _checked(value: Fraction) -> Fraction:
    if abs(value.numerator) > MAX_MAGNITUDE or value.denominator > MAX_MAGNITUDE:
        raise _Reject
    return value


def evaluate(text: str) -> Parsed | None:
    """The exact value and number literals of an arithmetic expression, or None if it is not one."""
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_CHARS:
        return None
    try:
        parser = _Parser(_tokenize(text))
        value = parser.expr(0)
        if parser.peek() is not None:
            return None
    except _Reject:
        return None
    return Parsed(value, tuple(parser.numbers))
