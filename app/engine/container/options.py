"""`options:` of a job's `container:` or of a service: `docker create` flags, as GitHub passes them.

Only flags that change what runs inside the container are honoured. Flags that would widen
what the container may do on the host (privileges, capabilities, devices, host namespaces,
mounts, another network) are refused with an error naming the flag: a workflow is hostile code.
Resource flags may lower the operator's limits, never raise them. Anything else is ignored,
and the job's log says so.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

REFUSED = {
    "--privileged", "--cap-add", "--security-opt", "--device", "--device-cgroup-rule", "--pid",
    "--ipc", "--uts", "--userns", "--network", "--net", "--network-alias", "--volume", "-v",
    "--volumes-from", "--mount", "--cgroup-parent", "--cgroupns", "--runtime", "--sysctl",
    "--group-add", "--oom-kill-disable", "--ulimit", "--gpus", "--init-path", "--publish", "-p",
    "--publish-all", "-P", "--add-host", "--dns", "--dns-option", "--dns-search", "--link",
}  # fmt: skip
HEALTH = {
    "--health-cmd": "cmd",
    "--health-interval": "interval",
    "--health-timeout": "timeout",
    "--health-retries": "retries",
    "--health-start-period": "start_period",
}
_DURATION = re.compile(r"(?P<value>\d+(?:\.\d+)?)(?P<unit>ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"^(?P<value>\d+(?:\.\d+)?)(?P<unit>[bkmg]?)b?$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


class OptionsError(ValueError):
    """`options:` names a flag this spindle refuses, or gives a flag a value it cannot read."""


@dataclass
class HealthCheck:
    cmd: str
    interval: float = 30.0
    timeout: float = 30.0
    retries: int = 3
    start_period: float = 0.0


@dataclass
class ContainerOptions:
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: str | None = None
    user: str | None = None
    workdir: str | None = None
    hostname: str | None = None
    memory_bytes: int | None = None
    cpus: float | None = None
    shm_size: int | None = None
    tmpfs: list[str] = field(default_factory=list)
    health: HealthCheck | None = None
    ignored: list[str] = field(default_factory=list)


def duration(text: str, flag: str) -> float:
    """Go durations as docker reads them: `10s`, `1m30s`, `500ms`; a bare number is seconds."""
    text = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    total, position = 0.0, 0
    for match in _DURATION.finditer(text):
        if match.start() != position:
            break
        total += float(match.group("value")) * _UNITS[match.group("unit")]
        position = match.end()
    if position != len(text) or not text:
        raise OptionsError(f"{flag} {text!r} is not a duration such as 10s or 1m30s")
    return total


def size(text: str, flag: str) -> int:
    match = _SIZE.match(text.strip())
    if not match:
        raise OptionsError(f"{flag} {text!r} is not a size such as 512m or 2g")
    return int(float(match.group("value")) * _SIZE_UNITS[match.group("unit").lower()])


def parse_options(text: str | None) -> ContainerOptions:
    """The honoured flags of an `options:` string; OptionsError for a refused or unreadable one."""
    result = ContainerOptions()
    if not text or not text.strip():
        return result
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise OptionsError(f"options {text!r} cannot be split into flags: {exc}") from None
    health: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not word.startswith("-"):
            raise OptionsError(f"options: {word!r} is not a flag (an image or command goes elsewhere)")
        flag, has_value, value = word.partition("=")
        if flag in REFUSED:
            raise OptionsError(f"options: {flag} is not allowed on this spindle (jobs never get host access)")
        takes_value = flag not in ("--init", "--rm", "--read-only", "--tty", "-t", "--interactive", "-i")
        if takes_value and not has_value:
            if i >= len(words):
                raise OptionsError(f"options: {flag} needs a value")
            value = words[i]
            i += 1
        if flag in HEALTH:
            health[HEALTH[flag]] = value
        elif flag in ("-e", "--env"):
            name, _, env_value = value.partition("=")
            result.env[name] = env_value
        elif flag == "--entrypoint":
            result.entrypoint = value
        elif flag in ("-u", "--user"):
            result.user = value
        elif flag in ("-w", "--workdir"):
            result.workdir = value
        elif flag in ("-h", "--hostname"):
            result.hostname = value
        elif flag in ("-m", "--memory"):
            result.memory_bytes = size(value, flag)
        elif flag == "--cpus":
            try:
                result.cpus = float(value)
            except ValueError:
                raise OptionsError(f"options: --cpus {value!r} is not a number") from None
        elif flag == "--shm-size":
            result.shm_size = size(value, flag)
        elif flag == "--tmpfs":
            result.tmpfs.append(value)
        else:
            result.ignored.append(flag)
    if health:
        if "cmd" not in health:
            raise OptionsError("options: --health-* flags need --health-cmd")
        check = HealthCheck(cmd=health["cmd"])
        for key in ("interval", "timeout", "start_period"):
            if key in health:
                setattr(check, key, duration(health[key], f"--health-{key.replace('_', '-')}"))
        if "retries" in health:
            if not health["retries"].isdigit():
                raise OptionsError(f"options: --health-retries {health['retries']!r} is not a whole number")
            check.retries = int(health["retries"])
        result.health = check
    return result
