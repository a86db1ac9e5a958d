"""A small, safe expression language over feature names, parsed to a whitelisted tree and evaluated vectorized.

Rule conditions in configs/rules.yaml are written in this language, for example
``recency_days > 365 or (p_alive < 0.1 and recency_days > 90)``. The text is never handed to
Python's ``eval``: an own tokenizer and a recursive-descent parser build an immutable tree of
the node types below, and only those nodes (and the functions in ``FUNCTIONS``) can be
evaluated. Evaluation works on whole columns with numpy.

Grammar, loosest binding first::

    expr       := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | comparison
    comparison := sum [ ("<" | "<=" | ">" | ">=" | "==" | "=" | "!=" | "<>") sum
                      | ["not"] "in" "(" literal ("," literal)* ")"
                      | ["not"] "between" sum "and" sum
                      | "is" ["not"] "null" ]
    sum        := product (("+" | "-") product)*
    product    := unary (("*" | "/") unary)*
    unary      := ("-" | "+") unary | primary
    primary    := number | 'text' | "text" | true | false | name
                | function "(" expr ("," expr)* ")" | "(" expr ")"

Keywords are case-insensitive; feature names are case-sensitive. Text literals use single or
double quotes, a quote inside is doubled (``'it''s'``). Comparisons do not chain. Numbers are
written with the ASCII digits 0-9 and must be finite (``1e999`` is an error, not infinity).
Control characters (NUL...) are rejected anywhere in the text; tabs and line breaks are
whitespace.

Limits: `MAX_LENGTH` characters, and `MAX_DEPTH` levels of nesting (parentheses, ``not``,
signs, calls), which keeps the recursive-descent parser far from Python's recursion limit. A
chain of terms (``a and b and ...``, ``x + y + ...``) is not nesting: it may run to the length
limit, and the checks, the evaluation, equality, ``repr`` and pickling walk trees with an
explicit stack, in time linear in the size of the tree.

Null semantics are SQL's three-valued logic: a comparison, ``in`` or ``between`` with a null
(NaN/None/missing) operand is *unknown*; ``not unknown`` is unknown; ``unknown and false`` is
false, ``unknown or true`` is true. A rule matches a client only where its condition is true,
so unknown never matches: ``not (x > 5)`` does not match a client whose x is null. Test nulls
explicitly with ``x is null`` or replace them with ``coalesce(x, 0)``. Arithmetic with a null
is null, and division by zero is null (no warning). ``min`` and ``max`` skip nulls (null only
when every argument is null), like SQL's LEAST/GREATEST in PostgreSQL.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from configs import SegmentationError

MAX_LENGTH = 10_000  # characters of one expression
MAX_DEPTH = 64  # nesting of parentheses, `not` and unary signs

NUMBER, TEXT, BOOL, ANY = "number", "text", "bool", "any"
KINDS = (NUMBER, TEXT, BOOL, ANY)

COMPARISONS = ("<", "<=", ">", ">=", "==", "!=")
ARITHMETIC = ("+", "-", "*", "/")
FUNCTIONS: dict[str, tuple[int, int | None]] = {  # name -> (min args, max args or None)
    "abs": (1, 1),
    "min": (2, None),
    "max": (2, None),
    "coalesce": (2, None),
}
KEYWORDS = frozenset({"and", "or", "not", "in", "between", "is", "null", "true", "false"})


# --------------------------------------------------------------------------------------------
# Errors


class RuleError(SegmentationError, ValueError):
    """A rule expression that cannot be parsed, checked or evaluated.

    The message names the rule (when known), what is wrong and the 1-based column in the
    expression text, e.g. ``rule 'vip': unexpected token ')' at position 17``.
    """

    def __init__(
        self,
        detail: str,
        *,
        rule: str | None = None,
        position: int | None = None,
        hint: str | None = None,
        source: str | None = None,
    ) -> None:
        self.detail = detail
        self.rule = rule
        self.position = position
        self.hint = hint
        self.source = source
        super().__init__(self._message())

    def _message(self) -> str:
        parts = []
        if self.source:
            parts.append(f"{self.source}: ")
        if self.rule:
            parts.append(f"rule {self.rule!r}: ")
        parts.append(self.detail)
        if self.position is not None:
            parts.append(f" at position {self.position}")
        if self.hint:
            parts.append(f"; {self.hint}")
        return "".join(parts)

    def located(self, *, rule: str | None = None, source: str | None = None) -> RuleError:
        """The same error (same class) with the rule name and/or the file filled in."""
        return type(self)(
            self.detail,
            rule=rule or self.rule,
            position=self.position,
            hint=self.hint,
            source=source or self.source,
        )


class RuleSyntaxError(RuleError):
    """The text is not a valid expression (including calls of functions that are not allowed)."""


class UnknownFeatureError(RuleError):
    """The expression names a feature that is not known; the hint suggests the closest name."""


class RuleTypeError(RuleError):
    """Operands of the wrong kind, e.g. text compared with a number, or a number used as a condition."""


class RuleEvaluationError(RuleError):
    """The expression cannot be evaluated on a frame (a column is missing or has the wrong type)."""


# --------------------------------------------------------------------------------------------
# Tree


@dataclass(frozen=True, kw_only=True)
class Node:
    """One node of a parsed expression; `pos` is the 1-based column of its token in the text.

    Nodes compare equal when their structure is equal, wherever they were written.
    """

    pos: int = field(compare=False)

    def children(self) -> tuple[Node, ...]:
        return ()

    # Equality, hash, repr and pickling walk the tree with an explicit stack (the generated
    # dataclass methods recurse, and a chain of a few hundred `and` terms is that deep).
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Node) or other.__class__ is not self.__class__:
            return NotImplemented
        return _structure(self) == _structure(other)

    def __hash__(self) -> int:
        return hash(_structure(self))

    def __repr__(self) -> str:
        return _fold(self, _children, _repr_node, lambda parent, index, text: text)

    def __reduce__(self) -> tuple[Callable[[list[_Flat]], Node], tuple[list[_Flat]]]:
        return _unflatten, (_flatten(self),)

    @property
    def features(self) -> frozenset[str]:
        """The feature names this expression reads."""
        names: set[str] = set()
        stack: list[Node] = [self]
        while stack:
            node = stack.pop()
            if isinstance(node, Name):
                names.add(node.name)
            stack.extend(node.children())
        return frozenset(names)

    def __str__(self) -> str:
        return render(self)


@dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class Literal(Node):
    value: float | str | bool


@dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class Name(Node):
    name: str


@dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class Negate(Node):
    operand: Node

    def children(self) -> tuple[Node, ...]:
        return (self.operand,)


@dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class Not(Node):
    operand: Node

    def children(self) -> tuple[Node, ...]:
        return (self.operand,)


@dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class Arithmetic(Node):
    op: str  # one of ARITHMETIC
    left: Node
    right: Node

    def children(self) -> tuple[Node, ...]:
        return (self.left, self.right)


@dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class Compare(Node):
    op: str  # one of COMPARISONS ("=" and "<>" are normalized to "==" and "!=")
    left: Node
    right: Node

    def children(self) -> tuple[Node, ...]:
        return (self.left, self.right)


@dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class Logical(Node):
    op: str  # "and" | "or"
    left: Node
    right: Node

    def children(self) -> tuple[Node, ...]:
        return (self.left, self.right)


@dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class InList(Node):
    operand: Node
    items: tuple[Literal, ...]
    negated: bool = False

    def children(self) -> tuple[Node, ...]:
        return (self.operand, *self.items)


@dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class Between(Node):
    operand: Node
    low: Node
    high: Node
    negated: bool = False

    def children(self) -> tuple[Node, ...]:
        return (self.operand, self.low, self.high)


@dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class IsNull(Node):
    operand: Node
    negated: bool = False

    def children(self) -> tuple[Node, ...]:
        return (self.operand,)


@dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class Call(Node):
    func: str  # one of FUNCTIONS
    args: tuple[Node, ...]

    def children(self) -> tuple[Node, ...]:
        return self.args


# A node without its children: (class, its other fields in order, number of children).
_Flat = tuple[type[Node], tuple[tuple[str, object], ...], int]
_CHILD_FIELDS = frozenset({"operand", "left", "right", "low", "high", "items", "args"})


def _flatten(root: Node) -> list[_Flat]:
    """The tree in post-order, one flat entry a node (no nesting: cheap to pickle)."""
    out: list[_Flat] = []
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        kids = node.children()
        if expanded:
            scalars = tuple(
                (f.name, getattr(node, f.name)) for f in fields(node) if f.name not in _CHILD_FIELDS
            )
            out.append((type(node), scalars, len(kids)))
            continue
        stack.append((node, True))
        stack.extend((kid, False) for kid in reversed(kids))
    return out


def _unflatten(flat: list[_Flat]) -> Node:
    """The tree `_flatten` flattened."""
    built: list[Node] = []
    for cls, scalars, count in flat:
        kids = built[len(built) - count :] if count else []
        del built[len(built) - count :]
        values: dict[str, Any] = dict(scalars)
        if cls in (Negate, Not, IsNull):
            values["operand"] = kids[0]
        elif cls in (Arithmetic, Compare, Logical):
            values["left"], values["right"] = kids
        elif cls is Between:
            values["operand"], values["low"], values["high"] = kids
        elif cls is InList:
            values["operand"], values["items"] = kids[0], tuple(kids[1:])
        elif cls is Call:
            values["args"] = tuple(kids)
        built.append(cls(**values))
    (root,) = built
    return root


def _structure(node: Node) -> tuple[tuple[object, ...], ...]:
    """What equality compares: the flattened tree without positions."""
    return tuple(
        (cls, tuple(value for name, value in scalars if name != "pos"), count)
        for cls, scalars, count in _flatten(node)
    )


def _repr_node(node: Node, texts: list[str]) -> str:
    """The dataclass repr of one node, given the reprs of its children."""
    kids = iter(texts)
    parts = []
    for f in fields(node):
        value = getattr(node, f.name)
        if f.name in ("items", "args"):
            items = [next(kids) for _ in value]
            text = "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
        elif f.name in _CHILD_FIELDS:
            text = next(kids)
        else:
            text = repr(value)
        parts.append(f"{f.name}={text}")
    return f"{type(node).__qualname__}({', '.join(parts)})"


# --------------------------------------------------------------------------------------------
# Public functions


def parse(text: str, *, rule: str | None = None) -> Node:
    """Parse an expression into a tree; a `RuleSyntaxError` names the rule and the position."""
    if not isinstance(text, str):
        raise RuleSyntaxError(
            f"expected the expression as text, got {type(text).__name__}", rule=rule
        )
    if len(text) > MAX_LENGTH:
        raise RuleSyntaxError(f"expression longer than {MAX_LENGTH} characters", rule=rule)
    if not text.strip():
        raise RuleSyntaxError("empty expression", rule=rule, position=1)
    try:
        return _Parser(text, rule).parse()
    except RecursionError:  # MAX_DEPTH keeps the parser far below the limit; a safety net
        raise RuleSyntaxError(
            f"expression nested too deeply (at most {MAX_DEPTH} levels of parentheses, "
            "'not', signs and calls)",
            rule=rule,
        ) from None


def check(
    node: Node,
    known: Mapping[str, str] | Iterable[str],
    *,
    rule: str | None = None,
    condition: bool = True,
) -> str:
    """Check names and operand kinds against the known features; return the expression's kind.

    `known` is either a set of names (kinds unknown) or a mapping name -> dtype (``"float64"``,
    ``"number"``, ``"text"``, ``"string"``, ``"bool"``...). Unknown names raise
    `UnknownFeatureError` with a "did you mean" hint; text compared with a number, arithmetic
    on text, or (when `condition`) an expression that is not a condition raise `RuleTypeError`.
    """
    kinds = known_kinds(known)
    kind = _Checker(kinds, rule).kind(node)
    if condition and kind not in (BOOL, ANY):
        raise RuleTypeError(
            f"the expression is a {kind}, not a condition (true or false)",
            rule=rule,
            position=node.pos,
        )
    return kind


def compile_expression(
    text: str,
    known: Mapping[str, str] | Iterable[str],
    *,
    rule: str | None = None,
    condition: bool = True,
) -> Node:
    """Parse and check an expression in one step (what the rule loader does for every rule)."""
    node = parse(text, rule=rule)
    check(node, known, rule=rule, condition=condition)
    return node


def evaluate(
    node: Node,
    frame: pd.DataFrame,
    *,
    missing_as_null: Collection[str] = (),
    rule: str | None = None,
) -> np.ndarray:
    """Evaluate a tree on every row of `frame` at once.

    Returns a bool array for a condition (true only where the condition is true, so unknown
    from nulls is False), a float64 array for arithmetic (NaN for null) or an object array for
    text (None for null). Names in `missing_as_null` may be absent from the frame and then read
    as null for every row (e.g. CLTV scores before they exist); any other absent name raises
    `RuleEvaluationError`.
    """
    value = _Evaluator(frame, frozenset(missing_as_null), rule).eval(node)
    if value.kind == BOOL:
        return value.data & ~value.null
    if value.kind == NUMBER:
        return value.data
    if value.kind == TEXT:
        return value.data
    return np.zeros(len(frame), dtype=bool)  # an all-null expression: unknown everywhere


def render(node: Node) -> str:
    """A canonical, fully parenthesized text of a tree (shows how the parser grouped it)."""
    if not isinstance(node, Node):
        raise TypeError(f"not an expression node: {node!r}")
    return _fold(node, _children, _render_node, lambda parent, index, text: text)


def _render_node(node: Node, texts: list[str]) -> str:
    if isinstance(node, Literal):
        if isinstance(node.value, bool):
            return "true" if node.value else "false"
        if isinstance(node.value, str):
            return "'" + node.value.replace("'", "''") + "'"
        return repr(int(node.value)) if float(node.value).is_integer() else repr(node.value)
    if isinstance(node, Name):
        return node.name
    if isinstance(node, Negate):
        return f"(-{texts[0]})"
    if isinstance(node, Not):
        return f"(not {texts[0]})"
    if isinstance(node, Arithmetic | Compare | Logical):
        return f"({texts[0]} {node.op} {texts[1]})"
    if isinstance(node, InList):
        word = "not in" if node.negated else "in"
        return f"({texts[0]} {word} ({', '.join(texts[1:])}))"
    if isinstance(node, Between):
        word = "not between" if node.negated else "between"
        return f"({texts[0]} {word} {texts[1]} and {texts[2]})"
    if isinstance(node, IsNull):
        return f"({texts[0]} is {'not ' if node.negated else ''}null)"
    if isinstance(node, Call):
        return f"{node.func}({', '.join(texts)})"
    raise TypeError(f"not an expression node: {node!r}")


def known_kinds(known: Mapping[str, object] | Iterable[str]) -> dict[str, str]:
    """Normalize known features to name -> kind (number, text, bool or any)."""
    if isinstance(known, Mapping):
        return {str(name): dtype_kind(dtype) for name, dtype in known.items()}
    if isinstance(known, str):
        raise TypeError("known features must be a collection of names, not one string")
    return dict.fromkeys((str(name) for name in known), ANY)


def dtype_kind(dtype: object) -> str:
    """The expression kind of a declared dtype (a numpy/pandas dtype or a name such as 'float')."""
    if dtype is None:
        return ANY
    text = str(dtype).lower()
    if text in KINDS:
        return text
    if "bool" in text:
        return BOOL
    if any(
        word in text for word in ("int", "float", "double", "decimal", "numeric", "number", "real")
    ):
        return NUMBER
    if any(word in text for word in ("str", "text", "object", "categor", "char", "utf8")):
        return TEXT
    return ANY


# --------------------------------------------------------------------------------------------
# Tokenizer and parser


@dataclass(frozen=True)
class _Token:
    kind: str  # number, text, name, keyword, op, end
    value: str  # keyword: lower case; text: the unquoted content; end: ""; else as written
    pos: int  # 1-based
    text: str  # as written, for messages
    number: float = 0.0  # the value of a number token


# ASCII digits only: `\d` would also match other scripts' digits (`١٢` would read as 12).
_NUMBER_RE = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# C0 and C1 control characters except tab, line feed and carriage return; lone surrogates.
_FORBIDDEN_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_OPERATORS = ("<=", ">=", "==", "!=", "<>", "<", ">", "=", "+", "-", "*", "/", "(", ")", ",")


def check_characters(text: str, *, rule: str | None = None) -> None:
    """Reject control characters (NUL...) and lone surrogates anywhere in the text.

    Tabs and line breaks are whitespace; any other control character could not be published
    (PostgreSQL refuses NUL in text) and is never meant.
    """
    match = _FORBIDDEN_RE.search(text)
    if match:
        char = match.group()
        what = "a lone surrogate" if "\ud800" <= char <= "\udfff" else "a control character"
        raise RuleSyntaxError(
            f"{what} (U+{ord(char):04X}) is not allowed in a rule",
            rule=rule,
            position=match.start() + 1,
        )


def _number(text: str, pos: int, rule: str | None) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise RuleSyntaxError(
            f"number {text} is too large (not a finite number)", rule=rule, position=pos
        )
    return value


def _tokenize(text: str, rule: str | None) -> list[_Token]:
    check_characters(text, rule=rule)
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char.isspace():
            i += 1
            continue
        pos = i + 1
        match = _NUMBER_RE.match(text, i)
        if match:
            number = _number(match.group(), pos, rule)
            tokens.append(_Token("number", match.group(), pos, match.group(), number))
            i = match.end()
            continue
        if char.isdigit():
            raise RuleSyntaxError(
                f"unexpected character {char!r}",
                rule=rule,
                position=pos,
                hint="numbers are written with the digits 0-9 only",
            )
        match = _NAME_RE.match(text, i)
        if match:
            word = match.group()
            if word.lower() in KEYWORDS:
                tokens.append(_Token("keyword", word.lower(), pos, word))
            else:
                tokens.append(_Token("name", word, pos, word))
            i = match.end()
            continue
        if char in "'\"":
            value, i = _read_text(text, i, rule)
            tokens.append(_Token("text", value, pos, text[pos - 1 : i]))
            continue
        for op in _OPERATORS:
            if text.startswith(op, i):
                tokens.append(_Token("op", op, pos, op))
                i += len(op)
                break
        else:
            raise RuleSyntaxError(f"unexpected character {char!r}", rule=rule, position=pos)
    tokens.append(_Token("end", "", n + 1, "end of expression"))
    return tokens


def _read_text(text: str, start: int, rule: str | None) -> tuple[str, int]:
    quote = text[start]
    out: list[str] = []
    i = start + 1
    while i < len(text):
        if text[i] == quote:
            if text.startswith(quote * 2, i):
                out.append(quote)
                i += 2
                continue
            return "".join(out), i + 1
        out.append(text[i])
        i += 1
    raise RuleSyntaxError("unterminated text literal", rule=rule, position=start + 1)


_COMPARE_OPS = {
    "<": "<",
    "<=": "<=",
    ">": ">",
    ">=": ">=",
    "==": "==",
    "=": "==",
    "!=": "!=",
    "<>": "!=",
}


class _Parser:
    def __init__(self, text: str, rule: str | None) -> None:
        self.rule = rule
        self.tokens = _tokenize(text, rule)
        self.index = 0
        self.depth = 0

    # helpers
    @property
    def token(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def at(self, kind: str, value: str | None = None) -> bool:
        token = self.token
        return token.kind == kind and (value is None or token.value == value)

    def accept(self, kind: str, value: str | None = None) -> _Token | None:
        return self.advance() if self.at(kind, value) else None

    def expect(self, kind: str, value: str, what: str) -> _Token:
        if not self.at(kind, value):
            raise self.unexpected(f"expected {what}")
        return self.advance()

    def unexpected(self, expected: str | None = None) -> RuleSyntaxError:
        token = self.token
        if token.kind == "end":
            detail = "unexpected end of expression"
        else:
            detail = f"unexpected token {token.text!r}"
        return RuleSyntaxError(detail, rule=self.rule, position=token.pos, hint=expected)

    def nest(self, pos: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise RuleSyntaxError(
                f"expression nested more than {MAX_DEPTH} levels deep", rule=self.rule, position=pos
            )

    # grammar
    def parse(self) -> Node:
        node = self.parse_or()
        if not self.at("end"):
            raise self.unexpected()
        return node

    def parse_or(self) -> Node:
        node = self.parse_and()
        while self.at("keyword", "or"):
            op = self.advance()
            node = Logical(op="or", left=node, right=self.parse_and(), pos=op.pos)
        return node

    def parse_and(self) -> Node:
        node = self.parse_not()
        while self.at("keyword", "and"):
            op = self.advance()
            node = Logical(op="and", left=node, right=self.parse_not(), pos=op.pos)
        return node

    def parse_not(self) -> Node:
        if self.at("keyword", "not"):
            op = self.advance()
            self.nest(op.pos)
            operand = self.parse_not()
            self.depth -= 1
            return Not(operand=operand, pos=op.pos)
        return self.parse_comparison()

    def parse_comparison(self) -> Node:
        left = self.parse_sum()
        token = self.token
        if token.kind == "op" and token.value in _COMPARE_OPS:
            self.advance()
            node: Node = Compare(
                op=_COMPARE_OPS[token.value], left=left, right=self.parse_sum(), pos=token.pos
            )
        elif token.kind == "keyword" and token.value in ("in", "between", "not", "is"):
            node = self.parse_postfix(left)
        else:
            return left
        after = self.token
        if (after.kind == "op" and after.value in _COMPARE_OPS) or (
            after.kind == "keyword" and after.value in ("in", "between", "is")
        ):
            raise RuleSyntaxError(
                f"unexpected token {after.text!r}",
                rule=self.rule,
                position=after.pos,
                hint="comparisons do not chain; join them with 'and'",
            )
        return node

    def parse_postfix(self, left: Node) -> Node:
        token = self.advance()
        if token.value == "is":
            negated = self.accept("keyword", "not") is not None
            self.expect("keyword", "null", "expected 'null' after 'is'")
            return IsNull(operand=left, negated=negated, pos=token.pos)
        negated = token.value == "not"
        if negated:
            if not (self.at("keyword", "in") or self.at("keyword", "between")):
                raise self.unexpected("expected 'in' or 'between' after 'not'")
            self.advance()
            keyword = self.tokens[self.index - 1].value
        else:
            keyword = token.value
        if keyword == "in":
            self.expect("op", "(", "expected '(' to open the list")
            items = [self.parse_list_item()]
            while self.accept("op", ","):
                items.append(self.parse_list_item())
            self.expect("op", ")", "expected ',' or ')' in the list")
            return InList(operand=left, items=tuple(items), negated=negated, pos=token.pos)
        low = self.parse_sum()
        self.expect("keyword", "and", "expected 'and' between the bounds")
        high = self.parse_sum()
        return Between(operand=left, low=low, high=high, negated=negated, pos=token.pos)

    def parse_list_item(self) -> Literal:
        token = self.token
        sign = 1.0
        if token.kind == "op" and token.value in ("-", "+"):
            self.advance()
            sign = -1.0 if token.value == "-" else 1.0
            if not self.at("number"):
                raise self.unexpected("expected a number after the sign")
        item = self.token
        if item.kind == "number":
            self.advance()
            return Literal(value=sign * item.number, pos=token.pos)
        if item.kind == "text":
            self.advance()
            return Literal(value=item.value, pos=item.pos)
        if item.kind == "keyword" and item.value in ("true", "false"):
            self.advance()
            return Literal(value=item.value == "true", pos=item.pos)
        raise self.unexpected("list items must be numbers, text or true/false")

    def parse_sum(self) -> Node:
        node = self.parse_product()
        while self.token.kind == "op" and self.token.value in ("+", "-"):
            op = self.advance()
            node = Arithmetic(op=op.value, left=node, right=self.parse_product(), pos=op.pos)
        return node

    def parse_product(self) -> Node:
        node = self.parse_unary()
        while self.token.kind == "op" and self.token.value in ("*", "/"):
            op = self.advance()
            node = Arithmetic(op=op.value, left=node, right=self.parse_unary(), pos=op.pos)
        return node

    def parse_unary(self) -> Node:
        token = self.token
        if token.kind == "op" and token.value in ("-", "+"):
            self.advance()
            self.nest(token.pos)
            operand = self.parse_unary()
            self.depth -= 1
            if token.value == "+":
                return operand
            if isinstance(operand, Literal) and isinstance(operand.value, float):
                return Literal(value=-operand.value, pos=token.pos)
            return Negate(operand=operand, pos=token.pos)
        return self.parse_primary()

    def parse_primary(self) -> Node:
        token = self.token
        if token.kind == "number":
            self.advance()
            return Literal(value=token.number, pos=token.pos)
        if token.kind == "text":
            self.advance()
            return Literal(value=token.value, pos=token.pos)
        if token.kind == "keyword" and token.value in ("true", "false"):
            self.advance()
            return Literal(value=token.value == "true", pos=token.pos)
        if token.kind == "keyword" and token.value == "null":
            raise RuleSyntaxError(
                "null can only be tested with 'is null' or 'is not null'",
                rule=self.rule,
                position=token.pos,
            )
        if token.kind == "name":
            self.advance()
            if self.at("op", "("):
                return self.parse_call(token)
            return Name(name=token.value, pos=token.pos)
        if token.kind == "op" and token.value == "(":
            self.advance()
            self.nest(token.pos)
            node = self.parse_or()
            self.depth -= 1
            self.expect("op", ")", "expected ')' to close the '(' at position " + str(token.pos))
            return node
        raise self.unexpected()

    def parse_call(self, name: _Token) -> Node:
        func = name.value.lower()
        if func not in FUNCTIONS:
            allowed = ", ".join(sorted(FUNCTIONS))
            raise RuleSyntaxError(
                f"unknown function {name.value!r}",
                rule=self.rule,
                position=name.pos,
                hint=f"allowed functions: {allowed}",
            )
        open_paren = self.advance()
        self.nest(open_paren.pos)
        args = [self.parse_or()]
        while self.accept("op", ","):
            args.append(self.parse_or())
        self.depth -= 1
        self.expect("op", ")", "expected ',' or ')' in the call")
        low, high = FUNCTIONS[func]
        if len(args) < low or (high is not None and len(args) > high):
            count = f"{low}" if low == high else f"at least {low}"
            raise RuleSyntaxError(
                f"{func}() takes {count} argument{'s' if low != 1 else ''}, got {len(args)}",
                rule=self.rule,
                position=name.pos,
            )
        return Call(func=func, args=tuple(args), pos=name.pos)


# --------------------------------------------------------------------------------------------
# Static checks


_T = TypeVar("_T")


def _fold(
    root: Node,
    children: Callable[[Node], tuple[Node, ...]],
    combine: Callable[[Node, list[_T]], _T],
    accept: Callable[[Node, int, _T], _T],
) -> _T:
    """Fold a tree bottom-up with an explicit stack, so no depth of tree can exhaust Python's.

    ``combine(node, results)`` gets the results of the node's `children` (in order);
    ``accept(parent, i, result)`` sees the result of the parent's i-th child as soon as it is
    known and may convert or reject it, so checks run in the order a recursive walk runs them
    (left to right, each operand checked before the next is visited). Every node is visited
    once: a tree of n nodes costs O(n).
    """
    stack: list[tuple[Node, tuple[Node, ...], list[_T]]] = [(root, children(root), [])]
    while True:
        node, kids, done = stack[-1]
        if len(done) < len(kids):
            kid = kids[len(done)]
            stack.append((kid, children(kid), []))
            continue
        result = combine(node, done)
        stack.pop()
        if not stack:
            return result
        parent, _, parent_done = stack[-1]
        parent_done.append(accept(parent, len(parent_done), result))


def _children(node: Node) -> tuple[Node, ...]:
    return node.children()


def _operands(node: Node) -> tuple[Node, ...]:
    """The children evaluation visits (the items of an `in` list are read as plain values)."""
    return (node.operand,) if isinstance(node, InList) else node.children()


class _Checker:
    def __init__(self, kinds: dict[str, str], rule: str | None) -> None:
        self.kinds = kinds
        self.rule = rule

    def fail(self, detail: str, node: Node) -> RuleTypeError:
        return RuleTypeError(detail, rule=self.rule, position=node.pos)

    def kind(self, node: Node) -> str:
        return _fold(node, _children, self.combine, self.accept)

    def accept(self, parent: Node, index: int, kind: str) -> str:
        """The operand checks: numbers for signs, arithmetic, between and min/max/abs;
        conditions for not, and, or."""
        if isinstance(parent, Not | Logical):
            if kind in (NUMBER, TEXT):
                raise self.fail(
                    f"{_operator_name(parent)} needs a condition (true or false), got {kind}",
                    parent.children()[index],
                )
        elif kind == TEXT and (
            isinstance(parent, Negate | Arithmetic | Between)
            or (isinstance(parent, Call) and parent.func != "coalesce")
        ):
            raise self.fail(
                f"{_operator_name(parent)} needs numbers, got text", parent.children()[index]
            )
        return kind

    def combine(self, node: Node, kinds: list[str]) -> str:
        if isinstance(node, Literal):
            if isinstance(node.value, bool):
                return BOOL
            return TEXT if isinstance(node.value, str) else NUMBER
        if isinstance(node, Name):
            return self.kind_name(node)
        if isinstance(node, Compare):
            return self.kind_compare(node, kinds[0], kinds[1])
        if isinstance(node, InList):
            return self.kind_inlist(node, kinds[0], kinds[1:])
        if isinstance(node, Call) and node.func == "coalesce":
            return self.kind_coalesce(node, kinds)
        if isinstance(node, Negate | Arithmetic | Call):
            return NUMBER
        return BOOL  # Not, Logical, Between, IsNull

    def kind_name(self, node: Name) -> str:
        if node.name in self.kinds:
            return self.kinds[node.name]
        close = difflib.get_close_matches(node.name, list(self.kinds), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else None
        raise UnknownFeatureError(
            f"unknown feature {node.name!r}", rule=self.rule, position=node.pos, hint=hint
        )

    def kind_compare(self, node: Compare, left: str, right: str) -> str:
        self.comparable(left, right, node)
        if TEXT in (left, right) and node.op not in ("==", "!="):
            raise self.fail(f"text can only be compared with == or !=, not {node.op!r}", node)
        return BOOL

    def comparable(self, left: str, right: str, node: Node) -> None:
        if ANY in (left, right) or left == right:
            return
        if {left, right} <= {NUMBER, BOOL}:
            return
        raise self.fail(f"cannot compare {left} with {right}", node)

    def kind_inlist(self, node: InList, operand: str, items: list[str]) -> str:
        for item, item_kind in zip(node.items, items, strict=True):
            self.comparable(operand, item_kind, item)
        if TEXT in set(items) and len(set(items)) > 1:
            raise self.fail("the list mixes text with numbers", node)
        return BOOL

    def kind_coalesce(self, node: Call, kinds: list[str]) -> str:
        known = set(kinds) - {ANY}
        if TEXT in known and len(known) > 1:
            raise self.fail("coalesce() arguments must all be numbers or all text", node)
        if TEXT in known or known == {BOOL}:
            return known.pop()
        return NUMBER if known else ANY


def _operator_name(node: Node) -> str:
    """How messages name the operator of a node: '-', '+', 'between', min()..."""
    if isinstance(node, Negate):
        return "'-'"
    if isinstance(node, Not):
        return "'not'"
    if isinstance(node, Arithmetic | Logical):
        return f"'{node.op}'"
    if isinstance(node, Between):
        return "'between'"
    if isinstance(node, Call):
        return f"{node.func}()"
    return type(node).__name__


# --------------------------------------------------------------------------------------------
# Vectorized evaluation


@dataclass(frozen=True)
class _Value:
    """A column of results: `data` plus a null mask. kind 'null' is null everywhere, any type."""

    kind: str  # number | text | bool | null
    data: np.ndarray
    null: np.ndarray


class _Evaluator:
    def __init__(self, frame: pd.DataFrame, optional: frozenset[str], rule: str | None) -> None:
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"expected a pandas DataFrame, got {type(frame).__name__}")
        self.frame = frame
        self.n = len(frame)
        self.optional = optional
        self.rule = rule
        self.columns: dict[str, _Value] = {}

    def fail(self, detail: str, node: Node) -> RuleEvaluationError:
        return RuleEvaluationError(detail, rule=self.rule, position=node.pos)

    def eval(self, node: Node) -> _Value:
        return _fold(node, _operands, self.combine, self.accept)

    def accept(self, parent: Node, index: int, value: _Value) -> _Value:
        """Convert an operand as soon as it is evaluated (numbers for signs, arithmetic and
        between; conditions for not, and, or); other operands are converted by the node."""
        if isinstance(parent, Negate | Arithmetic | Between):
            return self.number(value, parent, _operator_name(parent))
        if isinstance(parent, Not | Logical):
            return self.condition(value, parent, _operator_name(parent))
        return value

    def combine(self, node: Node, values: list[_Value]) -> _Value:
        method: Callable[[Node, list[_Value]], _Value] = getattr(
            self, f"eval_{type(node).__name__.lower()}"
        )
        return method(node, values)

    # conversions
    def all_null(self) -> _Value:
        return _Value("null", np.zeros(self.n, dtype=bool), np.ones(self.n, dtype=bool))

    def number(self, value: _Value, node: Node, what: str) -> _Value:
        if value.kind == NUMBER:
            return value
        if value.kind == BOOL:
            return _Value(
                NUMBER, np.where(value.null, np.nan, value.data.astype(float)), value.null
            )
        if value.kind == "null":
            return _Value(NUMBER, np.full(self.n, np.nan), value.null)
        raise self.fail(f"{what} needs numbers, got text", node)

    def condition(self, value: _Value, node: Node, what: str) -> _Value:
        if value.kind == BOOL:
            return value
        if value.kind == "null":
            return _Value(BOOL, np.zeros(self.n, dtype=bool), value.null)
        raise self.fail(f"{what} needs a condition (true or false), got {value.kind}", node)

    def text(self, value: _Value, node: Node) -> _Value:
        if value.kind == TEXT:
            return value
        if value.kind == "null":
            return _Value(TEXT, np.full(self.n, None, dtype=object), value.null)
        raise self.fail(f"cannot compare text with {value.kind}", node)

    # leaves
    def eval_literal(self, node: Literal, values: list[_Value]) -> _Value:
        no_null = np.zeros(self.n, dtype=bool)
        if isinstance(node.value, bool):
            return _Value(BOOL, np.full(self.n, node.value, dtype=bool), no_null)
        if isinstance(node.value, str):
            return _Value(TEXT, np.full(self.n, node.value, dtype=object), no_null)
        return _Value(NUMBER, np.full(self.n, float(node.value)), no_null)

    def eval_name(self, node: Name, values: list[_Value]) -> _Value:
        if node.name not in self.columns:
            self.columns[node.name] = self.column(node)
        return self.columns[node.name]

    def column(self, node: Name) -> _Value:
        if node.name not in self.frame.columns:
            if node.name in self.optional:
                return self.all_null()
            raise self.fail(f"feature {node.name!r} is not a column of the frame", node)
        series = self.frame[node.name]
        if isinstance(series, pd.DataFrame):
            raise self.fail(f"feature {node.name!r} is more than one column of the frame", node)
        null = series.isna().to_numpy(dtype=bool)
        dtype = series.dtype
        if pd.api.types.is_bool_dtype(dtype):
            return _Value(BOOL, series.to_numpy(dtype=bool, na_value=False), null)
        if pd.api.types.is_numeric_dtype(dtype):
            return _Value(NUMBER, series.to_numpy(dtype=float, na_value=np.nan), null)
        if pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype):
            raise self.fail(f"feature {node.name!r} has unsupported type {dtype}", node)
        if null.all():
            return self.all_null()
        inferred = pd.api.types.infer_dtype(series, skipna=True)
        if inferred in ("floating", "integer", "mixed-integer-float", "decimal"):
            return _Value(
                NUMBER, pd.to_numeric(series).to_numpy(dtype=float, na_value=np.nan), null
            )
        if inferred == "boolean":
            return _Value(BOOL, series.fillna(False).to_numpy(dtype=bool), null)
        data = np.array(series.astype(object).to_numpy(dtype=object), dtype=object, copy=True)
        data[null] = None
        return _Value(TEXT, data, null)

    # operators
    def eval_negate(self, node: Negate, values: list[_Value]) -> _Value:
        (value,) = values
        return _Value(NUMBER, -value.data, value.null)

    def eval_not(self, node: Not, values: list[_Value]) -> _Value:
        (value,) = values
        return _Value(BOOL, ~value.data & ~value.null, value.null)

    def eval_arithmetic(self, node: Arithmetic, values: list[_Value]) -> _Value:
        left, right = values
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if node.op == "+":
                data = left.data + right.data
            elif node.op == "-":
                data = left.data - right.data
            elif node.op == "*":
                data = left.data * right.data
            else:
                data = np.divide(left.data, right.data)
                data[right.data == 0] = np.nan
        return _Value(NUMBER, data, np.isnan(data))

    def eval_logical(self, node: Logical, values: list[_Value]) -> _Value:
        left, right = values
        left_true, right_true = left.data & ~left.null, right.data & ~right.null
        left_false, right_false = ~left.data & ~left.null, ~right.data & ~right.null
        if node.op == "and":
            true = left_true & right_true
            false = left_false | right_false
        else:
            true = left_true | right_true
            false = left_false & right_false
        return _Value(BOOL, true, ~(true | false))

    def eval_compare(self, node: Compare, values: list[_Value]) -> _Value:
        left, right = values
        null = left.null | right.null
        if TEXT in (left.kind, right.kind):
            left, right = self.text(left, node), self.text(right, node)
            if node.op not in ("==", "!="):
                raise self.fail(f"text can only be compared with == or !=, not {node.op!r}", node)
            equal = np.zeros(self.n, dtype=bool)
            known = ~null
            equal[known] = left.data[known] == right.data[known]
            data = equal if node.op == "==" else ~equal
        else:
            a = self.number(left, node, node.op).data
            b = self.number(right, node, node.op).data
            with np.errstate(invalid="ignore"):
                data = _COMPARE_FUNCS[node.op](a, b)
        return _Value(BOOL, data & ~null, null)

    def eval_inlist(self, node: InList, values: list[_Value]) -> _Value:
        (value,) = values
        items = [item.value for item in node.items]
        if value.kind == TEXT or (value.kind == "null" and any(isinstance(i, str) for i in items)):
            value = self.text(value, node)
            if not all(isinstance(item, str) for item in items):
                raise self.fail("cannot compare text with numbers in the list", node)
        else:
            value = self.number(value, node, "'in'")
            if any(isinstance(item, str) for item in items):
                raise self.fail("cannot compare numbers with text in the list", node)
            items = [float(item) for item in items]
        found = pd.Series(value.data, dtype=object if value.kind == TEXT else float).isin(items)
        data = found.to_numpy(dtype=bool)
        if node.negated:
            data = ~data
        return _Value(BOOL, data & ~value.null, value.null.copy())

    def eval_between(self, node: Between, values: list[_Value]) -> _Value:
        x, low, high = values
        null = x.null | low.null | high.null
        with np.errstate(invalid="ignore"):
            data = (x.data >= low.data) & (x.data <= high.data)
        if node.negated:
            data = ~data
        return _Value(BOOL, data & ~null, null)

    def eval_isnull(self, node: IsNull, values: list[_Value]) -> _Value:
        (value,) = values
        data = ~value.null if node.negated else value.null.copy()
        return _Value(BOOL, data, np.zeros(self.n, dtype=bool))

    def eval_call(self, node: Call, values: list[_Value]) -> _Value:
        if node.func == "coalesce":
            return self.coalesce(values, node)
        numbers = [self.number(value, node, f"{node.func}()").data for value in values]
        with np.errstate(invalid="ignore"):
            if node.func == "abs":
                data = np.abs(numbers[0])
            elif node.func == "min":
                data = numbers[0]
                for other in numbers[1:]:
                    data = np.fmin(data, other)
            else:
                data = numbers[0]
                for other in numbers[1:]:
                    data = np.fmax(data, other)
        return _Value(NUMBER, data, np.isnan(data))

    def coalesce(self, values: list[_Value], node: Node) -> _Value:
        kinds = {value.kind for value in values} - {"null"}
        if not kinds:
            return self.all_null()
        if TEXT in kinds:
            values = [self.text(value, node) for value in values]
            data = values[0].data.copy()
        elif kinds == {BOOL}:
            values = [self.condition(value, node, "coalesce()") for value in values]
            data = values[0].data.copy()
        else:
            values = [self.number(value, node, "coalesce()") for value in values]
            data = values[0].data.copy()
        null = values[0].null.copy()
        for value in values[1:]:
            take = null & ~value.null
            data[take] = value.data[take]
            null &= value.null
        return _Value(values[0].kind, data, null)


_COMPARE_FUNCS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
}
