"""A Dockerfile read into instructions, for the engine's own builder (builder.py).

    instructions = parse(text)      # [Instruction(line=3, name="RUN", args=..., json=..., flags=...)]

Supported: FROM (one stage), RUN, COPY, ADD (local files), ENV, ARG, WORKDIR, USER, ENTRYPOINT,
CMD, LABEL, EXPOSE, SHELL; `\\` line continuations, `#` comments and parser directives (ignored).
Anything else is refused with its name and line: StepImageError.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

from app.engine.backend import StepImageError

SUPPORTED = frozenset(
    {"FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "ENTRYPOINT", "CMD", "LABEL"}
    | {"EXPOSE", "SHELL"}
)
MAX_BYTES = 1 << 20  # a Dockerfile larger than this is refused
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")
_FLAG = re.compile(r"--([a-z-]+)(?:=(\S*))?$")


@dataclass
class Instruction:
    line: int  # of the instruction's first line, from 1
    name: str  # upper case
    text: str  # the arguments, continuations joined
    flags: dict[str, str] = field(default_factory=dict)  # --chown=..., --from=...

    def where(self) -> str:
        return f"{self.name} on line {self.line}"

    def json_list(self) -> list[str] | None:
        """The exec form (`["a", "b"]`) as a list; None for the shell form."""
        if not self.text.startswith("["):
            return None
        try:
            value = json.loads(self.text)
        except ValueError:
            return None
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            return None
        return value


def parse(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile; StepImageError names the first unsupported or malformed one."""
    if len(text.encode()) > MAX_BYTES:
        raise StepImageError(f"the Dockerfile is larger than {MAX_BYTES >> 10} KiB")
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction is dropped, as Docker does
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        instructions.append(_instruction(start, " ".join(part for part in pending if part)))
        pending = []
    if pending:
        instructions.append(_instruction(start, " ".join(part for part in pending if part)))
    if not instructions or instructions[0].name not in ("FROM", "ARG"):
        raise StepImageError("the Dockerfile does not start with FROM")
    stages = [item for item in instructions if item.name == "FROM"]
    if len(stages) != 1:
        raise StepImageError(
            f"{stages[1].where() if len(stages) > 1 else 'FROM'}: multi-stage Dockerfiles are not "
            "supported here (one FROM only)"
        )
    return instructions


def _instruction(line: int, text: str) -> Instruction:
    name, _, rest = text.partition(" ")
    name = name.upper()
    if name not in SUPPORTED:
        raise StepImageError(f"the Dockerfile's {name} on line {line} is not supported by this spindle")
    instruction = Instruction(line=line, name=name, text=rest.strip())
    if name in ("COPY", "ADD", "FROM", "RUN"):
        while instruction.text.startswith("--"):
            word, _, remainder = instruction.text.partition(" ")
            match = _FLAG.match(word)
            if match is None:
                raise StepImageError(f"{instruction.where()}: malformed flag {word!r}")
            instruction.flags[match.group(1)] = match.group(2) or ""
            instruction.text = remainder.strip()
    if not instruction.text:
        raise StepImageError(f"{instruction.where()} has no arguments")
    return instruction


def substitute(text: str, variables: dict[str, str]) -> str:
    """`$NAME` and `${NAME}` (with `:-default` and `:+alternative`) as Docker expands them."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(4)
        value = variables.get(name, "")
        operator, word = match.group(2), match.group(3) or ""
        if operator in (":-", "-"):
            return value or word
        if operator in (":+", "+"):
            return word if value else ""
        return value

    return _VARIABLE.sub(replace, text.replace("\\$", "\0")).replace("\0", "$")


def pairs(instruction: Instruction, variables: dict[str, str]) -> list[tuple[str, str]]:
    """ENV/LABEL/ARG's `k=v k2="v 2"` (or the old `ENV k v`); StepImageError when malformed."""
    text = instruction.text
    try:
        words = shlex.split(text, posix=True)
    except ValueError:
        raise StepImageError(f"{instruction.where()}: unbalanced quotes") from None
    if instruction.name != "ARG" and words and "=" not in words[0]:
        if len(words) < 2:
            raise StepImageError(f"{instruction.where()}: expected NAME=value")
        name, _, value = text.partition(" ")
        return [(name, substitute(value.strip(), variables))]
    result: list[tuple[str, str]] = []
    for word in words:
        name, equals, value = word.partition("=")
        if not name or (not equals and instruction.name != "ARG"):
            raise StepImageError(f"{instruction.where()}: expected NAME=value, found {word!r}")
        result.append((name, substitute(value, variables) if equals else ""))
    return result
