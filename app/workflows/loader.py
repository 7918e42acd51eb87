"""Workflow files read safely, as YAML 1.2 the way GitHub reads them: `load_yaml`.

PyYAML implements YAML 1.1, where `on`, `yes` and `off` are booleans and `010` is octal: the
loader here swaps in the YAML 1.2 core schema, so the key `on` stays the string "on" and only
true/false are booleans. Untrusted files are bounded: size, nesting depth, number of aliases and
the size of the document once aliases are expanded (a "billion laughs" file is refused before it
is built), duplicate keys and exotic tags are refused, as GitHub does.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from app.workflows.exceptions import InvalidWorkflow

MAX_SOURCE_BYTES = 512 * 1024
MAX_DEPTH = 64
MAX_ALIASES = 100
# Nodes after alias expansion: generous for real workflows (a large one has a few thousand).
MAX_EXPANDED_NODES = 100_000

_CORE_TAGS = {"tag:yaml.org,2002:" + name for name in ("str", "int", "float", "bool", "null", "map", "seq")}
_TAG = "tag:yaml.org,2002:"


class _LimitExceeded(Exception):
    pass


class _Resolver(yaml.resolver.Resolver):
    """The YAML 1.2 core schema's implicit types (no yes/no/on/off booleans, no 1.1 octal)."""

    yaml_implicit_resolvers: dict[Any, Any] = {}


_Resolver.add_implicit_resolver(
    _TAG + "bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Resolver.add_implicit_resolver(_TAG + "null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])
_Resolver.add_implicit_resolver(
    _TAG + "int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
_Resolver.add_implicit_resolver(
    _TAG + "float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


class _Constructor(yaml.constructor.SafeConstructor):
    pass


# libyaml (C) parses and composes ten times faster than PyYAML's Python code; both are given the
# same resolver and constructor, and the limits are checked on the event stream before composing.
if yaml.__with_libyaml__:

    class _Loader(yaml.cyaml.CParser, _Constructor, _Resolver):  # type: ignore[misc]
        def __init__(self, stream: str) -> None:
            yaml.cyaml.CParser.__init__(self, stream)
            _Constructor.__init__(self)
            _Resolver.__init__(self)

else:  # pragma: no cover - PyYAML built without libyaml

    class _Loader(  # type: ignore[no-redef]
        yaml.reader.Reader,
        yaml.scanner.Scanner,
        yaml.parser.Parser,
        yaml.composer.Composer,
        _Constructor,
        _Resolver,
    ):
        def __init__(self, stream: str) -> None:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            yaml.composer.Composer.__init__(self)
            _Constructor.__init__(self)
            _Resolver.__init__(self)


_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")


def _bracket_depth(source: str) -> int:
    """The deepest run of unclosed `[`/`{` in the raw text: an upper bound on flow nesting."""
    depth = deepest = 0
    for char in _NOT_BRACKETS.sub("", source):
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif depth:
            depth -= 1
    return deepest


def _check_flow_depth(source: str) -> None:
    """Flow nesting (`[[[...`) checked before libyaml sees it.

    libyaml looks ahead over a whole flow collection before it emits the first event (a `[` may
    start a simple key), so the event stream cannot stop it early, and recent libyaml stops at
    its own limit of 1000 with wording of its own. The raw bracket count is a cheap bound that real
    files never approach; only when it is passed are the tokens counted exactly, with PyYAML's
    pure-Python scanner (no recursion, no limit of its own), since brackets inside strings do not nest.
    """
    if _bracket_depth(source) <= MAX_DEPTH:
        return
    depth = 0
    scanner = _TokenScanner(source)
    try:
        while scanner.check_token():
            token = scanner.get_token()
            if isinstance(token, (yaml.FlowSequenceStartToken, yaml.FlowMappingStartToken)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise _LimitExceeded(f"nested more than {MAX_DEPTH} levels deep")
            elif isinstance(token, (yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken)):
                depth -= 1
    except yaml.YAMLError:
        return  # not YAML at all: the real parser says where


class _TokenScanner(yaml.reader.Reader, yaml.scanner.Scanner):
    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)


def _check_events(source: str) -> None:
    """Nesting depth and alias count, from the event stream: nothing is built yet."""
    _check_flow_depth(source)
    depth = aliases = 0
    for event in yaml.parse(source, Loader=_Loader):
        if isinstance(event, CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise _LimitExceeded(f"nested more than {MAX_DEPTH} levels deep")
        elif isinstance(event, CollectionEndEvent):
            depth -= 1
        elif isinstance(event, AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise _LimitExceeded(f"more than {MAX_ALIASES} aliases")


def _construct_int(loader: _Constructor, node: ScalarNode) -> int:
    value = loader.construct_scalar(node)
    if value.startswith("0o"):
        return int(value[2:], 8)
    if value.startswith("0x"):
        return int(value[2:], 16)
    return int(value)


def _construct_float(loader: _Constructor, node: ScalarNode) -> float:
    value = loader.construct_scalar(node).lower()
    if value.endswith(".inf"):
        return float("-inf") if value.startswith("-") else float("inf")
    if value == ".nan":
        return float("nan")
    return float(value)


_Constructor.add_constructor(_TAG + "int", _construct_int)
_Constructor.add_constructor(_TAG + "float", _construct_float)
_Constructor.add_constructor(
    _TAG + "bool", lambda loader, node: loader.construct_scalar(node).lower() == "true"
)
_Constructor.add_constructor(_TAG + "null", lambda loader, node: None)


def _check_graph(root: Node) -> None:
    """Refuse cycles, unknown tags, duplicate keys and documents too big once aliases expand."""
    memo: dict[int, tuple[int, int]] = {}  # id(node) → (expanded size, height)
    active: set[int] = set()

    def visit(node: Node, depth: int) -> tuple[int, int]:
        key = id(node)
        if key in memo:
            size, height = memo[key]
        else:
            if key in active:
                raise _LimitExceeded("an alias refers to its own anchor")
            if node.tag not in _CORE_TAGS:
                raise _LimitExceeded(f"the tag {node.tag} is not supported")
            active.add(key)
            size, height = 1, 1
            if isinstance(node, SequenceNode):
                children = node.value
            elif isinstance(node, MappingNode):
                children = [part for pair in node.value for part in pair]
                seen: set[tuple[str, str]] = set()
                for key_node, _ in node.value:
                    if isinstance(key_node, ScalarNode):
                        ident = (key_node.tag, key_node.value)
                        if ident in seen:
                            line = key_node.start_mark.line + 1
                            raise _LimitExceeded(f"the key {key_node.value!r} appears twice (line {line})")
                        seen.add(ident)
            else:
                children = []
            for child in children:
                child_size, child_height = visit(child, depth + 1)
                size += child_size
                height = max(height, child_height + 1)
                if size > MAX_EXPANDED_NODES:
                    raise _LimitExceeded(f"more than {MAX_EXPANDED_NODES} nodes once aliases are expanded")
            active.discard(key)
            memo[key] = (size, height)
        if depth + height > MAX_DEPTH * 2:
            raise _LimitExceeded("nested too deeply once aliases are expanded")
        return size, height

    visit(root, 0)


def load_yaml(source: str, *, path: str) -> Any:
    """Parse one YAML document as GitHub does (YAML 1.2 core schema, bounded); errors name `path`."""
    if len(source.encode("utf-8", errors="surrogatepass")) > MAX_SOURCE_BYTES:
        raise InvalidWorkflow(path, f"larger than {MAX_SOURCE_BYTES // 1024} KiB")
    loader = _Loader(source)
    try:
        _check_events(source)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_graph(node)
        return loader.construct_document(node)
    except _LimitExceeded as exc:
        raise InvalidWorkflow(path, f"refused: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise InvalidWorkflow(path, f"invalid YAML{where}: {problem}") from None
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        raise InvalidWorkflow(path, f"invalid YAML: {exc}") from None
    finally:
        loader.dispose()
