"""Settings: one pydantic-settings model, read from SPINDLE_* variables, validated at start."""

from __future__ import annotations

import ipaddress
import re
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.secrets.crypto import SecretsKeyError, decode_key

# A DNS name (labels of letters, digits and hyphens) or an IPv4 literal, or a bracketed
# IPv6 literal, with an optional :port. No scheme, path, userinfo or whitespace.
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
HOST_RE = re.compile(rf"^(?:(?:{_LABEL}\.)*{_LABEL}|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{{1,5}}))?\Z")
DID_RE = re.compile(r"^did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]\Z")


def is_valid_host(value: str) -> bool:
    """True for `name`, `name:port`, `1.2.3.4:port` or `[::1]:port`, the forms a knot or hostname takes."""
    if len(value) > 253 + 6:
        return False
    match = HOST_RE.match(value)
    if not match:
        return False
    if value.startswith("["):
        try:
            ipaddress.IPv6Address(value[1 : value.index("]")])
        except ValueError:
            return False
    port = match.group("port")
    return port is None or 0 < int(port) < 65536


def host_without_port(host: str) -> str:
    """`example.com:8080` → `example.com`; `[::1]:80` → `::1`."""
    if host.startswith("["):
        return host[1 : host.index("]")]
    return host.rsplit(":", 1)[0] if ":" in host else host


def is_local_host(host: str) -> bool:
    """localhost and loopback literals: the hosts dev mode may reach over plain http."""
    name = host_without_port(host).lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "spindle"


class Settings(BaseSettings):
    """Every knob of the service; docs/configuration.md lists them."""

    # hide_input_in_errors: a bad SPINDLE_SECRETS_KEY (or a database URL with a password) is never
    # echoed back in an error message.
    model_config = SettingsConfigDict(env_prefix="SPINDLE_", extra="ignore", hide_input_in_errors=True)

    hostname: str = "localhost:6555"
    public_url: str | None = None
    owner: str | None = None
    database_url: str | None = None
    plc_url: str = "https://plc.directory"
    dev: bool = False
    listen: str = "0.0.0.0:6555"
    data_dir: Path = Field(default_factory=default_data_dir)

    knot_timeout: float = 10.0
    max_jobs: int = Field(default=2, ge=1, le=64)
    # A stable name for this process, so that at start it can tell its own runs that were
    # left `running` by a crash from those of another live process sharing the database.
    instance_id: str | None = None
    job_timeout_minutes: float = Field(default=360, gt=0)
    # The container engine every job runs in (docs/execution.md): its Docker Engine API address,
    # `unix:///path.sock` or `tcp://host:port`. Unset: DOCKER_HOST, else a Podman API service the
    # spindle starts itself, else /var/run/docker.sock.
    docker_host: str | None = None
    runner_image: str = "localhost/spindle-runner:bookworm"
    # What a job's network reaches: "filtered" (the internet, none of this host's loopback,
    # private or link-local addresses: nftables rules the spindle installs), "none" (no network).
    job_network: Literal["filtered", "none"] = "filtered"
    job_memory_mb: int = Field(default=4096, ge=64)
    job_max_processes: int = Field(default=1024, ge=32)
    job_cpus: float = Field(default=2.0, gt=0, le=512)
    job_disk_mb: int = Field(default=10240, ge=64)
    run_log_mb: int = Field(default=50, ge=1)
    # `vars.*` of every workflow: a JSON object of names to strings (GitHub's configuration
    # variables, set by the operator here; Tangled has no per-repo variables).
    vars: dict[str, str] = Field(default_factory=dict)
    log_level: str = "info"
    # The service's own log lines: `text` for people, `json` (one object per line: time, level,
    # logger, message and any extra fields) for a log collector. docs/operations.md.
    log_format: Literal["text", "json"] = "text"
    # Where `uses: owner/repo@ref` is fetched from, as `<actions_url>/<owner>/<repo>`: GitHub, or an
    # operator's mirror (Forgejo/Gitea runners call it DEFAULT_ACTIONS_URL).
    actions_url: str = Field(default="https://github.com", pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$")
    # Serve actions only from the cache under <data_dir>/actions: nothing is fetched.
    actions_offline: bool = False
    # The cache's bound; least recently used actions are removed past it.
    actions_cache_mb: int = Field(default=2048, ge=1)
    # Tangled's records (spindle members, repos that pick this spindle, collaborators) are read
    # from this Jetstream; empty: not followed (only the operator's registry is served).
    jetstream_url: str = Field(
        default="wss://jetstream2.us-east.bsky.network/subscribe",
        pattern=r"^(wss?://[^/?#\s]+(/[^?#\s]*)?)?$",
    )

    # The key that encrypts stored secret values (docs/secrets.md): 32 random bytes in base64,
    # standard or URL-safe alphabet. Unset: <data_dir>/secrets.key, created (mode 0600) on first use.
    secrets_key: SecretStr | None = None

    @field_validator("secrets_key")
    @classmethod
    def _check_secrets_key(cls, value: SecretStr | None) -> SecretStr | None:
        # The value is never echoed: the message says what is wrong with it, not what it is.
        if value is not None:
            try:
                decode_key(value.get_secret_value(), source="SPINDLE_SECRETS_KEY")
            except SecretsKeyError as exc:
                raise ValueError(str(exc)) from None
        return value

    # Retention (docs/operations.md): a background sweep deletes, in small batches, finished
    # pipelines older than `retention_runs_days` (runs, status events, logs), the log lines of
    # finished runs older than `retention_logs_days`, and the logs of the oldest finished runs
    # while all stored logs exceed `retention_log_mb`. 0 turns a rule off (kept forever). The
    # newest `retention_keep_pipelines` pipelines of each repo are never removed by age.
    retention_runs_days: float = Field(default=90, ge=0)
    retention_logs_days: float = Field(default=30, ge=0)
    retention_log_mb: int = Field(default=0, ge=0)
    retention_keep_pipelines: int = Field(default=50, ge=0)
    retention_interval_seconds: float = Field(default=600, gt=0)
    # Rows per DELETE statement (and per transaction), and the pause between two of them.
    retention_batch_rows: int = Field(default=500, ge=1, le=10_000)
    retention_pause_ms: int = Field(default=50, ge=0)

    # -- holding up under abuse (docs/limits.md) --
    # Runs started per minute (token buckets, per process, bursts up to the same number): by one
    # actor, and in one repo (knot events included). 0 turns a limit off.
    actor_runs_per_minute: float = Field(default=30, ge=0)
    repo_runs_per_minute: float = Field(default=60, ge=0)
    # Runs of one repo waiting as `pending` (read from the database, so across processes); past
    # it, new runs of that repo are refused. 0 turns it off.
    max_queued_runs_per_repo: int = Field(default=50, ge=0)
    # Seconds a client has to send a request's headers (from its connection, or the end of the
    # previous response), and then its body; past it the connection is closed (408 when possible).
    header_timeout: float = Field(default=10.0, gt=0)
    body_timeout: float = Field(default=30.0, gt=0)
    # Live watchers (log/status/event WebSockets and SSE streams) in this process, overall and
    # per client address; past them a new one is refused (HTTP 503 / 429).
    max_watchers: int = Field(default=500, ge=1)
    max_watchers_per_address: int = Field(default=20, ge=1)
    # A watcher whose client takes no frame for this many seconds (it stopped reading) is closed.
    stream_send_timeout: float = Field(default=30.0, gt=0)
    # Events one /events connection may replay from its cursor; it is then closed (4429) with the
    # cursor to continue from.
    events_replay_max: int = Field(default=10_000, ge=1)
    # Events a second that all /events replays of this process share (history is read and encoded
    # on the event loop: unpaced, 20 replaying clients take the whole process).
    events_replay_per_second: float = Field(default=500, gt=0)
    # DID look-ups: a failed resolution is remembered for this many seconds, and each directory
    # (the PLC, each did:web host) is asked at most this many times a minute for uncached DIDs.
    did_failure_ttl: float = Field(default=60.0, ge=0)
    did_lookups_per_minute: float = Field(default=120, gt=0)

    @field_validator("hostname")
    @classmethod
    def _check_hostname(cls, value: str) -> str:
        if not is_valid_host(value):
            raise ValueError(f"SPINDLE_HOSTNAME must be host[:port] with no scheme or path, got {value!r}")
        return value

    @field_validator("owner")
    @classmethod
    def _check_owner(cls, value: str | None) -> str | None:
        if value is not None and not DID_RE.match(value):
            raise ValueError(f"SPINDLE_OWNER must be a DID such as did:plc:..., got {value!r}")
        return value

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"SPINDLE_PUBLIC_URL must be an http(s) base URL, got {value!r}")
        return value.rstrip("/")

    @field_validator("plc_url")
    @classmethod
    def _check_plc_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"SPINDLE_PLC_URL must be an http(s) URL, got {value!r}")
        return value.rstrip("/")

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"SPINDLE_LISTEN must be address:port, got {value!r}")
        return value

    @cached_property
    def did(self) -> str:
        """did:web of this service: the hostname with ':' written '%3A'."""
        return "did:web:" + self.hostname.replace(":", "%3A")

    @cached_property
    def base_url(self) -> str:
        """Base of every URL handed out: http for localhost in dev mode, https otherwise."""
        if self.public_url:
            return self.public_url
        scheme = "http" if self.dev and is_local_host(self.hostname) else "https"
        return f"{scheme}://{self.hostname}"

    @cached_property
    def ws_base_url(self) -> str:
        return "ws" + self.base_url[len("http") :]

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'spindle.db'}"

    @cached_property
    def listen_host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @cached_property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    def require_owner(self) -> str:
        if not self.owner:
            raise ValueError("SPINDLE_OWNER is required to serve: set it to the DID of the spindle's owner")
        return self.owner
