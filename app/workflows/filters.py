"""The filters of `on.push` / `on.pull_request`, with GitHub's pattern syntax and semantics.

Patterns (GitHub's "filter pattern cheat sheet"):
    *      any run of characters but `/`          **     any run of characters
    **/    nothing, or any run ending in `/`      ?  +   zero or one / one or more of the
    [a-z0-9AB]  one character listed or in a range       character or class just before
    \\x    the character x itself                 !x     (first character) a negative pattern
Matching is case-sensitive and against the whole name. It runs as a set of states stepped
through the name once (no backtracking), so no pattern costs more than its length times the
name's: a file full of `**a**a**a` patterns cannot stall the service.

Order matters, as GitHub documents: a name is included when the last pattern it matches is
positive, so `['*.md', '!README.md']` takes every markdown file but README.md. `*-ignore` lists
follow the same rule: a name is ignored when the last ignore pattern it matches is positive.

Choices where GitHub's documentation says nothing:
- a list of only negative patterns matches nothing (GitHub asks for one positive pattern);
- paths: with `paths` the event matches when at least one changed path is included; with
  `paths-ignore` when at least one is not ignored, so an event that changed no file matches
  neither; `changed_paths=None` (the changes are unknown, as after a force push GitHub could not
  diff) skips the paths filters, as GitHub runs the workflow when it cannot tell.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from app.workflows.exceptions import InvalidWorkflow

MAX_PATTERN_CHARS = 1024
MAX_PATTERNS = 256

# What one step of the automaton accepts: a set of characters, any character, or any but `/`.
_ANY = "any"
_NOT_SLASH = "not /"
_Accepts = frozenset[str] | str


def _accepts(accepts: _Accepts, char: str) -> bool:
    if accepts is _ANY:
        return True
    if accepts is _NOT_SLASH:
        return char != "/"
    return char in accepts


class _Automaton:
    """States 0..n-1; `edges[s]` are (accepts, target), `skips[s]` the states reached for free."""

    def __init__(self) -> None:
        self.edges: list[list[tuple[_Accepts, int]]] = []
        self.skips: list[list[int]] = []

    def state(self) -> int:
        self.edges.append([])
        self.skips.append([])
        return len(self.edges) - 1

    def closure(self, states: Iterable[int]) -> set[int]:
        reached = set(states)
        pending = list(reached)
        while pending:
            for target in self.skips[pending.pop()]:
                if target not in reached:
                    reached.add(target)
                    pending.append(target)
        return reached


class Pattern:
    """One filter pattern; `matches` says whether a whole branch, tag or path name fits it."""

    __slots__ = ("_automaton", "_final", "negative", "text")

    def __init__(self, text: str) -> None:
        """Raises ValueError saying what is wrong with `text`."""
        self.text = text
        self.negative = text.startswith("!")
        body = text[1:] if self.negative else text
        if not body:
            raise ValueError("an empty pattern")
        if len(text) > MAX_PATTERN_CHARS:
            raise ValueError(f"a pattern longer than {MAX_PATTERN_CHARS} characters")
        self._automaton, self._final = _compile(body)

    def matches(self, name: str) -> bool:
        automaton = self._automaton
        current = automaton.closure([0])
        for char in name:
            following = {
                target
                for state in current
                for accepts, target in automaton.edges[state]
                if _accepts(accepts, char)
            }
            if not following:
                return False
            current = automaton.closure(following)
        return self._final in current

    def __repr__(self) -> str:
        return f"Pattern({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pattern) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


@lru_cache(maxsize=1024)
def _compile(body: str) -> tuple[_Automaton, int]:
    """The automaton of a pattern without its `!`, and its final state (shared: the same few
    patterns, `main` and `docs/**`, come back in file after file)."""
    automaton = _Automaton()
    current = automaton.state()
    # The last single-character step, which a following `?` or `+` makes optional or repeated.
    last: tuple[int, _Accepts, int] | None = None
    i = 0
    while i < len(body):
        char = body[i]
        if char == "*":
            if body.startswith("**/", i):
                # `**/`: nothing, or one or more characters and a `/` (any depth of directories).
                inside, after = automaton.state(), automaton.state()
                automaton.skips[current].append(after)
                automaton.edges[current].append((_ANY, inside))
                automaton.edges[inside] += [(_ANY, inside), (frozenset("/"), after)]
                current, i = after, i + 3
            else:
                double = body.startswith("**", i)
                loop = automaton.state()
                automaton.skips[current].append(loop)
                automaton.edges[loop].append((_ANY if double else _NOT_SLASH, loop))
                current, i = loop, i + (2 if double else 1)
            last = None
            continue
        if char in "?+" and last is not None:
            before, accepts, after = last
            if char == "?":
                automaton.skips[before].append(after)
            else:
                automaton.edges[after].append((accepts, after))
            last = None
            i += 1
            continue
        if char == "[":
            accepts, i = _character_class(body, i)
        elif char == "\\":
            if i + 1 == len(body):
                raise ValueError("a \\ at the end, escaping nothing")
            accepts, i = frozenset(body[i + 1]), i + 2
        else:
            accepts, i = frozenset(char), i + 1
        step = automaton.state()
        automaton.edges[current].append((accepts, step))
        last = (current, accepts, step)
        current = step
    return automaton, current


_RANGES = (("a", "z"), ("A", "Z"), ("0", "9"))


def _character_class(body: str, start: int) -> tuple[frozenset[str], int]:
    """The characters of `[...]` at `start`, and the index after its `]`."""
    end = body.find("]", start + 1)
    if end == -1:
        raise ValueError("a [ that no ] closes")
    inside = body[start + 1 : end]
    if not inside:
        raise ValueError("empty brackets []")
    chars: set[str] = set()
    i = 0
    while i < len(inside):
        if i + 2 < len(inside) and inside[i + 1] == "-":
            low, high = inside[i], inside[i + 2]
            if not any(a <= low <= high <= z for a, z in _RANGES):
                raise ValueError(f"the range {low}-{high}: ranges can only include a-z, A-Z and 0-9")
            chars.update(chr(code) for code in range(ord(low), ord(high) + 1))
            i += 3
        else:
            chars.add(inside[i])
            i += 1
    return frozenset(chars), end + 1


def included(patterns: Iterable[Pattern], name: str) -> bool:
    """Whether the last pattern `name` matches is a positive one (False when it matches none)."""
    result = False
    for pattern in patterns:
        if pattern.matches(name):
            result = not pattern.negative
    return result


Patterns = tuple[Pattern, ...]


@dataclass(frozen=True)
class EventFilter:
    """The filters of one event; None where the filter is not given."""

    branches: Patterns | None = None
    branches_ignore: Patterns | None = None
    tags: Patterns | None = None
    tags_ignore: Patterns | None = None
    paths: Patterns | None = None
    paths_ignore: Patterns | None = None

    def matches_branch(self, branch: str) -> bool:
        """A push to or a pull request into `branch`: only the branch filters decide, and when
        only tag filters are given no branch matches."""
        return _matches_name(
            branch, self.branches, self.branches_ignore, other_kind=(self.tags, self.tags_ignore)
        )

    def matches_tag(self, tag: str) -> bool:
        """A push of `tag`: only the tag filters decide, and with only branch filters none matches."""
        return _matches_name(
            tag, self.tags, self.tags_ignore, other_kind=(self.branches, self.branches_ignore)
        )

    def matches_paths(self, changed_paths: Collection[str] | None) -> bool:
        """Whether the changed files pass `paths` / `paths-ignore` (None: unknown, both pass)."""
        if changed_paths is None:
            return True
        if self.paths is not None:
            return any(included(self.paths, path) for path in changed_paths)
        if self.paths_ignore is not None:
            return any(not included(self.paths_ignore, path) for path in changed_paths)
        return True


def _matches_name(
    name: str,
    wanted: Patterns | None,
    ignored: Patterns | None,
    *,
    other_kind: tuple[Patterns | None, Patterns | None],
) -> bool:
    if wanted is not None:
        return included(wanted, name)
    if ignored is not None:
        return not included(ignored, name)
    return all(patterns is None for patterns in other_kind)


# (key, its -ignore twin, field of the key, field of the twin)
_PAIRS = (
    ("branches", "branches-ignore", "branches", "branches_ignore"),
    ("tags", "tags-ignore", "tags", "tags_ignore"),
    ("paths", "paths-ignore", "paths", "paths_ignore"),
)


def parse_filter(path: str, event: str, config: Any, *, tags: bool = True) -> EventFilter:
    """`on.<event>`'s filters (other keys, such as `types`, are left alone); `tags` False for an
    event that has no tags (pull requests), whose tag keys are then ignored."""
    where = f"on.{event}"
    if config is None:
        return EventFilter()
    if not isinstance(config, dict):
        raise InvalidWorkflow(path, f"{where} must be a map or empty")
    given: dict[str, Patterns] = {}
    for key, twin, field, twin_field in _PAIRS:
        if key == "tags" and not tags:
            continue
        if key in config and twin in config:
            raise InvalidWorkflow(path, f"{where}: {key} and {twin} cannot both be given")
        for name, attribute in ((key, field), (twin, twin_field)):
            if name in config:
                given[attribute] = _patterns(path, f"{where}.{name}", config[name])
    return EventFilter(**given)


def _patterns(path: str, where: str, value: Any) -> Patterns:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InvalidWorkflow(path, f"{where} must be a pattern or a list of patterns")
    if len(values) > MAX_PATTERNS:
        raise InvalidWorkflow(path, f"{where} has more than {MAX_PATTERNS} patterns")
    patterns = []
    for text in values:
        try:
            patterns.append(Pattern(text))
        except ValueError as exc:
            raise InvalidWorkflow(path, f"{where}: {text[:100]!r} is not a pattern: {exc}") from None
    return tuple(patterns)
