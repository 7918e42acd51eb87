"""GitHub Actions expressions: a tokenizer, a recursive-descent parser and an evaluator (no eval()).

    ${{ github.event_name == 'push' && contains(matrix.os, 'ubuntu') }}

Semantics follow GitHub's documentation and the actions/runner implementation:
- values are null, booleans, numbers (floats), strings, arrays and objects;
- `==` / `!=` / `<` ... compare loosely: operands of different kinds are converted to numbers
  (null → 0, true → 1, '' → 0, 'abc' → NaN), strings compare case-insensitively, arrays and
  objects are equal only to themselves;
- `&&` and `||` short-circuit and return an operand, not a boolean;
- property access (`a.b`, `a['b']`) is case-insensitive and gives null for anything missing;
  `a.*.b` maps over the elements of an array or the values of an object;
- a string becomes `''` for null, `'true'`/`'false'`, the shortest decimal for a number,
  `'Array'` / `'Object'`.

Grammar, lowest precedence first:

    or      := and ('||' and)*
    and     := eq ('&&' eq)*
    eq      := cmp (('==' | '!=') cmp)*
    cmp     := unary (('<' | '<=' | '>' | '>=') unary)*
    unary   := '!' unary | postfix
    postfix := primary ('.' (NAME | '*') | '[' or ']')*
    primary := literal | NAME '(' [or (',' or)*] ')' | NAME | '(' or ')'
"""

from __future__ import annotations

import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

MAX_EXPRESSION_LENGTH = 20_000
MAX_DEPTH = 50
# What one function call may build, and what one evaluation may build in all: nested format()
# calls grow exponentially (an 18 KB expression once asked for 16 billion characters).
MAX_RESULT_CHARS = 1024 * 1024
MAX_EVALUATION_CHARS = 16 * 1024 * 1024
CONTEXT_NAMES = frozenset(
    {"github", "env", "vars", "job", "jobs", "steps", "runner", "secrets", "strategy", "matrix",
     "needs", "inputs"}
)  # fmt: skip


class ExpressionError(ValueError):
    """An expression that does not parse or cannot be evaluated; the message names it."""


class StatusFunctions(Protocol):
    """What success() / failure() / cancelled() mean where the expression is evaluated."""

    def success(self) -> bool: ...
    def failure(self) -> bool: ...
    def cancelled(self) -> bool: ...


# ---------------------------------------------------------------------------------------------
# Values


class FilteredArray(list[Any]):
    """The result of a `.*` filter: property access maps over its elements."""


def kind(value: Any) -> str:
    """The expression kind of a Python value: null, boolean, number, string, array or object."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    raise ExpressionError(f"unsupported value of type {type(value).__name__}")


_NUMBER_RE = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")


def to_number(value: Any) -> float:
    k = kind(value)
    if k == "null":
        return 0.0
    if k == "boolean":
        return 1.0 if value else 0.0
    if k == "number":
        return float(value)
    if k == "string":
        text = value.strip()
        if not text:
            return 0.0
        try:
            if re.match(r"^0x[0-9a-fA-F]+$", text):
                return float(int(text, 16))
            if re.match(r"^0o[0-7]+$", text):
                return float(int(text[2:], 8))
            if _NUMBER_RE.match(text):
                return float(text)
        except ValueError:
            pass
        if text in ("Infinity", "+Infinity"):
            return math.inf
        if text == "-Infinity":
            return -math.inf
        return math.nan
    return math.nan


def format_number(number: float) -> str:
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    if float(number).is_integer() and abs(number) < 1e15:
        return str(int(number))
    return repr(float(number))


def to_string(value: Any) -> str:
    """How a value reads when interpolated into a string."""
    k = kind(value)
    if k == "null":
        return ""
    if k == "boolean":
        return "true" if value else "false"
    if k == "number":
        return format_number(float(value))
    if k == "string":
        return str(value)
    return "Array" if k == "array" else "Object"


def truthy(value: Any) -> bool:
    k = kind(value)
    if k == "null":
        return False
    if k == "boolean":
        return bool(value)
    if k == "number":
        number = float(value)
        return number != 0 and not math.isnan(number)
    if k == "string":
        return value != ""
    return True


def _coerce(left: Any, right: Any) -> tuple[Any, Any]:
    """Bring two operands to one kind the way GitHub does before comparing them."""
    lk, rk = kind(left), kind(right)
    if lk == rk:
        return left, right
    if lk == "number" and rk == "string":
        return left, to_number(right)
    if lk == "string" and rk == "number":
        return to_number(left), right
    if lk in ("boolean", "null"):
        return _coerce(to_number(left), right)
    if rk in ("boolean", "null"):
        return _coerce(left, to_number(right))
    return left, right


def loose_equal(left: Any, right: Any) -> bool:
    left, right = _coerce(left, right)
    lk, rk = kind(left), kind(right)
    if lk != rk:
        return False
    if lk == "null":
        return True
    if lk == "number":
        return float(left) == float(right)  # NaN is never equal, as in GitHub
    if lk == "string":
        return str(left).casefold() == str(right).casefold()
    if lk == "boolean":
        return bool(left) == bool(right)
    return left is right


def _compare(left: Any, right: Any) -> int | None:
    """-1/0/1 for ordered operands of one kind after coercion; None when they don't order."""
    left, right = _coerce(left, right)
    lk, rk = kind(left), kind(right)
    if lk != rk:
        return None
    if lk == "number":
        a, b = float(left), float(right)
        if math.isnan(a) or math.isnan(b):
            return None
        return (a > b) - (a < b)
    if lk == "string":
        a_s, b_s = str(left).casefold(), str(right).casefold()
        return (a_s > b_s) - (a_s < b_s)
    if lk == "boolean":
        return int(bool(left)) - int(bool(right))
    return None


def lookup(obj: Any, key: Any) -> Any:
    """`obj[key]` with GitHub's rules: case-insensitive keys, null for anything missing."""
    if isinstance(obj, FilteredArray):
        found = FilteredArray()
        for item in obj:
            value = lookup(item, key)
            if value is not None:
                found.append(value)
        return found
    k = kind(obj)
    if k == "object":
        if not isinstance(key, str):
            key = to_string(key)
        if key in obj:
            return obj[key]
        folded = key.casefold()
        for name, value in obj.items():
            if isinstance(name, str) and name.casefold() == folded:
                return value
        return None
    if k == "array" and kind(key) == "number":
        number = float(key)
        if number.is_integer() and 0 <= number < len(obj):
            return obj[int(number)]
    return None


def _json_ready(value: Any) -> Any:
    k = kind(value)
    if k == "number":
        number = float(value)
        return int(number) if number.is_integer() and abs(number) < 1e15 else number
    if k == "array":
        return [_json_ready(v) for v in value]
    if k == "object":
        return {str(name): _json_ready(v) for name, v in value.items()}
    return value


def to_json(value: Any) -> str:
    return json.dumps(_json_ready(value), indent=2, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# Tokens


@dataclass(frozen=True)
class Token:
    type: str  # number | string | name | op | end
    value: Any
    pos: int


_TOKEN_RE = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>-?(?:0x[0-9a-fA-F]+|0o[0-7]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?))
  | (?P<string>'(?:[^']|'')*')
  | (?P<name>[A-Za-z_][A-Za-z0-9_-]*)
  | (?P<op>==|!=|<=|>=|&&|\|\||[<>!()\[\].,*])
""",
    re.VERBOSE,
)


def tokenize(text: str) -> list[Token]:
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(f"expression is longer than {MAX_EXPRESSION_LENGTH} characters")
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if not match:
            if text[pos] == "'":
                raise ExpressionError(f"unterminated string starting at position {pos + 1}")
            raise ExpressionError(f"unexpected character {text[pos]!r} at position {pos + 1}")
        group = match.lastgroup
        raw = match.group()
        if group == "number":
            if raw.lstrip("-").startswith(("0x", "0o")):
                sign = -1 if raw.startswith("-") else 1
                digits = raw.lstrip("-")
                tokens.append(
                    Token("number", float(sign * int(digits[2:], 16 if digits[1] == "x" else 8)), pos)
                )
            else:
                tokens.append(Token("number", float(raw), pos))
        elif group == "string":
            tokens.append(Token("string", raw[1:-1].replace("''", "'"), pos))
        elif group == "name":
            tokens.append(Token("name", raw, pos))
        elif group == "op":
            tokens.append(Token("op", raw, pos))
        pos = match.end()
    tokens.append(Token("end", None, len(text)))
    return tokens


# ---------------------------------------------------------------------------------------------
# Syntax tree


class Node(ABC):
    @abstractmethod
    def evaluate(self, env: Evaluation) -> Any:
        """The value of this expression in `env`."""

    def calls(self) -> set[str]:
        """Lower-cased names of every function this expression calls."""
        return set()


@dataclass
class Literal(Node):
    value: Any

    def evaluate(self, env: Evaluation) -> Any:
        return self.value


@dataclass
class NamedValue(Node):
    name: str

    def evaluate(self, env: Evaluation) -> Any:
        return env.named_value(self.name)


@dataclass
class Property(Node):
    target: Node
    key: Node

    def evaluate(self, env: Evaluation) -> Any:
        return lookup(self.target.evaluate(env), self.key.evaluate(env))

    def calls(self) -> set[str]:
        return self.target.calls() | self.key.calls()


@dataclass
class Filter(Node):
    target: Node

    def evaluate(self, env: Evaluation) -> Any:
        value = self.target.evaluate(env)
        if isinstance(value, FilteredArray):
            # `a.*.*`: flatten one level further.
            out = FilteredArray()
            for item in value:
                out.extend(_filter_items(item))
            return out
        return FilteredArray(_filter_items(value))

    def calls(self) -> set[str]:
        return self.target.calls()


def _filter_items(value: Any) -> list[Any]:
    k = kind(value)
    if k == "array":
        return list(value)
    if k == "object":
        return list(value.values())
    return []


@dataclass
class Not(Node):
    operand: Node

    def evaluate(self, env: Evaluation) -> Any:
        return not truthy(self.operand.evaluate(env))

    def calls(self) -> set[str]:
        return self.operand.calls()


@dataclass
class Logical(Node):
    op: str  # && | ||
    operands: list[Node]

    def evaluate(self, env: Evaluation) -> Any:
        value: Any = None
        for operand in self.operands:
            value = operand.evaluate(env)
            if self.op == "&&" and not truthy(value):
                return value
            if self.op == "||" and truthy(value):
                return value
        return value

    def calls(self) -> set[str]:
        return set().union(*(o.calls() for o in self.operands))


@dataclass
class Comparison(Node):
    op: str
    left: Node
    right: Node

    def evaluate(self, env: Evaluation) -> Any:
        left, right = self.left.evaluate(env), self.right.evaluate(env)
        if self.op == "==":
            return loose_equal(left, right)
        if self.op == "!=":
            return not loose_equal(left, right)
        order = _compare(left, right)
        if order is None:
            return False
        return {"<": order < 0, "<=": order <= 0, ">": order > 0, ">=": order >= 0}[self.op]

    def calls(self) -> set[str]:
        return self.left.calls() | self.right.calls()


@dataclass
class Call(Node):
    name: str
    args: list[Node]

    def evaluate(self, env: Evaluation) -> Any:
        return env.call(self.name, self.args)

    def calls(self) -> set[str]:
        return {self.name.lower()}.union(*(a.calls() for a in self.args))


# ---------------------------------------------------------------------------------------------
# Parser


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.index = 0
        self.depth = 0

    @property
    def token(self) -> Token:
        return self.tokens[self.index]

    def error(self, message: str, token: Token | None = None) -> ExpressionError:
        token = token or self.token
        return ExpressionError(f"{message} at position {token.pos + 1} in expression: {self.text.strip()}")

    def take(self, op: str) -> bool:
        if self.token.type == "op" and self.token.value == op:
            self.index += 1
            return True
        return False

    def expect(self, op: str) -> None:
        if not self.take(op):
            found = "the end" if self.token.type == "end" else repr(str(self.token.value))
            raise self.error(f"expected {op!r} but found {found}")

    def parse(self) -> Node:
        if self.token.type == "end":
            raise self.error("empty expression")
        node = self.parse_or()
        if self.token.type != "end":
            raise self.error(f"unexpected {str(self.token.value)!r}")
        return node

    def nested(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"expression nests deeper than {MAX_DEPTH} levels")

    def parse_or(self) -> Node:
        self.nested()
        operands = [self.parse_and()]
        while self.take("||"):
            operands.append(self.parse_and())
        self.depth -= 1
        return operands[0] if len(operands) == 1 else Logical("||", operands)

    def parse_and(self) -> Node:
        operands = [self.parse_eq()]
        while self.take("&&"):
            operands.append(self.parse_eq())
        return operands[0] if len(operands) == 1 else Logical("&&", operands)

    def parse_eq(self) -> Node:
        node = self.parse_cmp()
        while self.token.type == "op" and self.token.value in ("==", "!="):
            op = self.token.value
            self.index += 1
            node = Comparison(op, node, self.parse_cmp())
        return node

    def parse_cmp(self) -> Node:
        node = self.parse_unary()
        while self.token.type == "op" and self.token.value in ("<", "<=", ">", ">="):
            op = self.token.value
            self.index += 1
            node = Comparison(op, node, self.parse_unary())
        return node

    def parse_unary(self) -> Node:
        if self.take("!"):
            self.nested()
            node = Not(self.parse_unary())
            self.depth -= 1
            return node
        return self.parse_postfix()

    def parse_postfix(self) -> Node:
        node = self.parse_primary()
        while True:
            if self.take("."):
                if self.take("*"):
                    node = Filter(node)
                elif self.token.type == "name":
                    node = Property(node, Literal(self.token.value))
                    self.index += 1
                else:
                    raise self.error("expected a property name after '.'")
            elif self.take("["):
                if self.take("*"):
                    node = Filter(node)
                else:
                    node = Property(node, self.parse_or())
                self.expect("]")
            else:
                return node

    def parse_primary(self) -> Node:
        token = self.token
        if token.type in ("number", "string"):
            self.index += 1
            return Literal(token.value)
        if token.type == "name":
            self.index += 1
            word = token.value
            if self.take("("):
                args: list[Node] = []
                if not self.take(")"):
                    args.append(self.parse_or())
                    while self.take(","):
                        args.append(self.parse_or())
                    self.expect(")")
                return Call(word, args)
            literal = {"true": True, "false": False, "null": None, "NaN": math.nan, "Infinity": math.inf}
            if word in literal:
                return Literal(literal[word])
            if word.lower() not in CONTEXT_NAMES:
                raise self.error(f"unrecognized named-value {word!r}", token)
            return NamedValue(word.lower())
        if self.take("("):
            node = self.parse_or()
            self.expect(")")
            return node
        if token.type == "end":
            raise self.error("unexpected end of expression")
        raise self.error(f"unexpected {str(token.value)!r}")


def parse(text: str) -> Node:
    """The syntax tree of one expression (the text between `${{` and `}}`)."""
    return _Parser(text).parse()


# ---------------------------------------------------------------------------------------------
# Evaluation


class _AlwaysSuccess:
    def success(self) -> bool:
        return True

    def failure(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False


FunctionImpl = Callable[..., Any]


@dataclass
class Evaluation:
    """The named values (`github`, `env`, `matrix` ...) and job status an expression sees."""

    contexts: Mapping[str, Any]
    status: StatusFunctions = field(default_factory=_AlwaysSuccess)
    produced: int = 0  # characters built by function calls so far (bounded by MAX_EVALUATION_CHARS)
    # hashFiles(patterns...) -> hex digest; the engine computes it in the job's workspace. None
    # where no workspace exists (job-level keys), as on GitHub.
    hash_files: Callable[[tuple[str, ...]], str] | None = None

    def named_value(self, name: str) -> Any:
        if name == "secrets":
            # This spindle has no secrets store: every secret reads as empty, as an unset one does.
            return self.contexts.get("secrets", {})
        return self.contexts.get(name, {})

    def call(self, name: str, args: list[Node]) -> Any:
        lowered = name.lower()
        if lowered in ("success", "failure", "cancelled", "always"):
            if args:
                raise ExpressionError(f"{name}() takes no arguments")
            if lowered == "always":
                return True
            return bool(getattr(self.status, lowered)())
        if lowered == "hashfiles":
            if not args:
                raise ExpressionError(f"{name}() takes at least one pattern")
            if self.hash_files is None:
                raise ExpressionError(f"{name}() is only available in steps")
            return self.hash_files(tuple(to_string(a.evaluate(self)) for a in args))
        spec = _FUNCTIONS.get(lowered)
        if spec is None:
            raise ExpressionError(f"unrecognized function {name!r}")
        impl, low, high = spec
        if not low <= len(args) <= high:
            wanted = str(low) if low == high else f"{low} to {high if high < 99 else 'any number of'}"
            raise ExpressionError(f"{name}() takes {wanted} arguments, got {len(args)}")
        result = impl(*[a.evaluate(self) for a in args])
        if isinstance(result, str):
            self.produced += len(result)
            if self.produced > MAX_EVALUATION_CHARS:
                raise ExpressionError(
                    f"the expression builds more than {MAX_EVALUATION_CHARS // (1024 * 1024)} MiB of text"
                )
        return result


def _contains(search: Any, item: Any) -> bool:
    if kind(search) == "array":
        return any(loose_equal(element, item) for element in search)
    return to_string(item).casefold() in to_string(search).casefold()


def _starts_with(text: Any, prefix: Any) -> bool:
    return to_string(text).casefold().startswith(to_string(prefix).casefold())


def _ends_with(text: Any, suffix: Any) -> bool:
    return to_string(text).casefold().endswith(to_string(suffix).casefold())


def _too_long(name: str) -> ExpressionError:
    return ExpressionError(f"{name}(): the result is longer than {MAX_RESULT_CHARS // (1024 * 1024)} MiB")


def _format(template: Any, *args: Any) -> str:
    text = to_string(template)
    values = [to_string(arg) for arg in args]
    out: list[str] = []
    size = 0
    i = 0
    while i < len(text):
        if size > MAX_RESULT_CHARS:
            raise _too_long("format")
        char = text[i]
        if char == "{":
            if text.startswith("{{", i):
                out.append("{")
                i += 2
                continue
            end = text.find("}", i)
            index = text[i + 1 : end] if end != -1 else ""
            if not index.isdigit():
                raise ExpressionError(f"format(): invalid placeholder in {text!r}")
            if int(index) >= len(args):
                raise ExpressionError(f"format(): placeholder {{{index}}} has no argument in {text!r}")
            out.append(values[int(index)])
            size += len(out[-1])
            i = end + 1
        elif char == "}":
            if text.startswith("}}", i):
                out.append("}")
                i += 2
                continue
            raise ExpressionError(f"format(): unbalanced '}}' in {text!r}")
        else:
            out.append(char)
            size += 1
            i += 1
    if size > MAX_RESULT_CHARS:
        raise _too_long("format")
    return "".join(out)


def _join(items: Any, separator: Any = ",") -> str:
    if kind(items) == "array":
        glue = to_string(separator)
        parts = [to_string(item) for item in items]
        if sum(map(len, parts)) + len(glue) * max(len(parts) - 1, 0) > MAX_RESULT_CHARS:
            raise _too_long("join")
        return glue.join(parts)
    return to_string(items)


def _from_json(text: Any) -> Any:
    source = to_string(text)
    if not source.strip():
        raise ExpressionError("fromJSON(): the argument is empty")
    try:
        return json.loads(source)
    except json.JSONDecodeError as exc:
        raise ExpressionError(f"fromJSON(): invalid JSON ({exc.msg} at position {exc.pos + 1})") from exc


_FUNCTIONS: dict[str, tuple[FunctionImpl, int, int]] = {
    "contains": (_contains, 2, 2),
    "startswith": (_starts_with, 2, 2),
    "endswith": (_ends_with, 2, 2),
    "format": (_format, 1, 99),
    "join": (_join, 1, 2),
    "tojson": (to_json, 1, 1),
    "fromjson": (_from_json, 1, 1),
}

STATUS_FUNCTIONS = frozenset({"success", "failure", "cancelled", "always"})


def evaluate(text: str, evaluation: Evaluation) -> Any:
    """The value of one expression."""
    return parse(text).evaluate(evaluation)


# ---------------------------------------------------------------------------------------------
# Templates: strings with ${{ }} inside


def _split_template(text: str) -> list[tuple[bool, str]]:
    """[(is_expression, text)]: literal runs and the insides of each `${{ … }}`."""
    parts: list[tuple[bool, str]] = []
    pos = 0
    while True:
        start = text.find("${{", pos)
        if start == -1:
            if pos < len(text):
                parts.append((False, text[pos:]))
            return parts
        if start > pos:
            parts.append((False, text[pos:start]))
        i = start + 3
        in_string = False
        while i < len(text):
            if text[i] == "'":
                # '' inside a string is an escaped quote: toggling twice keeps the state.
                in_string = not in_string
            elif not in_string and text.startswith("}}", i):
                break
            i += 1
        else:
            raise ExpressionError(
                f"'${{{{' at position {start + 1} is never closed with '}}}}': {text[:200]}"
            )
        parts.append((True, text[start + 3 : i]))
        pos = i + 2


def has_expression(value: Any) -> bool:
    return isinstance(value, str) and "${{" in value


def interpolate(text: str, evaluation: Evaluation) -> str:
    """`text` with every `${{ expr }}` replaced by the string of its value."""
    if "${{" not in text:
        return text
    return "".join(
        to_string(evaluate(part, evaluation)) if is_expr else part for is_expr, part in _split_template(text)
    )


def evaluate_value(value: Any, evaluation: Evaluation) -> Any:
    """A YAML value that may hold expressions: a lone `${{ expr }}` keeps its type (a number,
    an object from fromJSON ...), text around expressions makes a string; lists and maps recurse."""
    if isinstance(value, str):
        if "${{" not in value:
            return value
        parts = _split_template(value.strip())
        if len(parts) == 1 and parts[0][0]:
            return evaluate(parts[0][1], evaluation)
        return interpolate(value, evaluation)
    if isinstance(value, list):
        return [evaluate_value(item, evaluation) for item in value]
    if isinstance(value, Mapping):
        return {key: evaluate_value(item, evaluation) for key, item in value.items()}
    return value


def condition_expression(condition: Any) -> str | None:
    """The expression text of an `if:` (which may omit `${{ }}`); None for a literal bool/empty."""
    if condition is None or isinstance(condition, bool):
        return None
    text = str(condition).strip() if not isinstance(condition, str) else condition.strip()
    if not text:
        return None
    if text.startswith("${{") and text.endswith("}}"):
        parts = _split_template(text)
        if len(parts) == 1 and parts[0][0]:
            return parts[0][1]
    return text


def evaluate_condition(condition: Any, evaluation: Evaluation) -> bool:
    """An `if:`: true when absent; without a status function it means `success() && (…)`."""
    if condition is None:
        return evaluation.status.success()
    if isinstance(condition, bool):
        return evaluation.status.success() and condition
    if isinstance(condition, int | float):
        return evaluation.status.success() and truthy(condition)
    text = condition_expression(condition)
    if text is None:
        return evaluation.status.success()
    if "${{" in text:
        # Text around ${{ }} makes a string, and any non-empty string is true (GitHub does the same).
        return evaluation.status.success() and truthy(interpolate(text, evaluation))
    node = parse(text)
    if not node.calls() & STATUS_FUNCTIONS:
        return evaluation.status.success() and truthy(node.evaluate(evaluation))
    return truthy(node.evaluate(evaluation))
