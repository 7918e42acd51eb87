"""`hashFiles(patterns...)`: GitHub's algorithm, computed inside the job's container.

As the runner's hashFiles (actions/runner, on @actions/glob) does it:
- each argument may hold several patterns, one per line; `#` starts a comment; `!` excludes;
  patterns are relative to GITHUB_WORKSPACE; `*` and `?` stay within a path segment, `**` spans
  segments, `[...]` is a character class; the last pattern that matches a path decides;
- the search starts at each pattern's literal prefix (nested ones dropped), walks depth-first
  in directory-listing order, follows symbolic links (a directory already seen is not entered
  again), and keeps regular files inside the workspace;
- the result is the SHA-256 of the concatenated binary SHA-256 digests of the files, in the order
  found, as hex; no file at all gives an empty string.

The files are the job's, so the script runs in its container (python3, which the runner image has;
without it the step fails naming hashFiles).
"""

from __future__ import annotations

SCRIPT = r"""
import hashlib, os, re, sys

workspace = os.getcwd()
patterns = []
for argument in sys.argv[1:]:
    for line in argument.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = False
        while line.startswith("!"):
            negate, line = not negate, line[1:]
        patterns.append((negate, os.path.normpath(os.path.join(workspace, line))))


def regex(pattern):
    out = []
    parts = pattern.split("/")
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "**":
            out.append("(?:[^/]*(?:/[^/]*)*)" if last else "(?:[^/]+/)*")
            continue
        i = 0
        while i < len(part):
            c = part[i]
            if c == "*":
                out.append("[^/]*")
            elif c == "?":
                out.append("[^/]")
            elif c == "[":
                end = part.find("]", i + 1)
                if end == -1:
                    out.append(re.escape(c))
                else:
                    body = part[i + 1:end].replace("\\", "\\\\")
                    if body.startswith("!"):
                        body = "^" + body[1:]
                    out.append("[" + body + "]")
                    i = end
            else:
                out.append(re.escape(c))
            i += 1
        if not last:
            out.append("/")
    return re.compile("".join(out) + r"\Z")


compiled = [(negate, regex(pattern)) for negate, pattern in patterns]


def root(pattern):
    literal = []
    for part in pattern.split("/"):
        if any(c in part for c in "*?["):
            break
        literal.append(part)
    return "/".join(literal) or "/"


roots = []
for negate, pattern in patterns:
    if negate:
        continue
    candidate = root(pattern)
    if any(candidate == r or candidate.startswith(r.rstrip("/") + "/") for r in roots):
        continue
    roots = [r for r in roots if not r.startswith(candidate.rstrip("/") + "/")] + [candidate]


def matches(path):
    result = False
    for negate, pattern in compiled:
        if pattern.match(path):
            result = not negate
    return result


total = hashlib.sha256()
found = False
seen = set()
prefix = workspace.rstrip("/") + "/"
for start in roots:
    stack = [start]
    while stack:
        path = stack.pop()
        try:
            if os.path.isdir(path):
                real = os.path.realpath(path)
                if real in seen:
                    continue
                seen.add(real)
                children = [os.path.join(path, name) for name in os.listdir(path)]
                stack.extend(reversed(children))
                continue
            if not os.path.isfile(path) or not path.startswith(prefix) or not matches(path):
                continue
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError:
            continue
        total.update(digest.digest())
        found = True
print(total.hexdigest() if found else "")
"""
