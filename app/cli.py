"""The `spindle` admin command: serve, migrate, manage the registry of repos, build the runner image."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError
from pythonjsonlogger.json import JsonFormatter

from app import migrate
from app.config import DID_RE, Settings, is_valid_host
from app.database import create_engine, create_sessionmaker
from app.engine import masking
from app.engine.container import engine as container_engine
from app.engine.container import images
from app.repos import service as repo_service
from app.secrets import service as secrets_service
from app.secrets.crypto import SecretCipher, SecretDecryptError, SecretsKeyError, decode_key
from app.xrpc.errors import XrpcError


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()]
        raise SystemExit("spindle: invalid configuration:\n" + "\n".join(lines)) from None


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    """The service's own log on stderr: text lines, or with SPINDLE_LOG_FORMAT=json one JSON object
    per line (`level`, `logger`, `message`, any `extra=` fields, `exc_info`, `time` in UTC)."""
    handler = logging.StreamHandler(stream)
    if settings.log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "{levelname}{name}{message}",
                style="{",
                rename_fields={"levelname": "level", "name": "logger"},
                timestamp="time",
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())


def _did(value: str) -> str:
    if not DID_RE.match(value):
        raise argparse.ArgumentTypeError(f"not a DID: {value!r}")
    return value


def _host(value: str) -> str:
    if not is_valid_host(value):
        raise argparse.ArgumentTypeError(f"not a host[:port] (no scheme or path): {value!r}")
    return value


def _rkey(value: str) -> str:
    if repo_service.parse_repo_uri(f"at://did:plc:x/{repo_service.REPO_COLLECTION}/{value}") is None:
        raise argparse.ArgumentTypeError(f"not a record key: {value!r}")
    return value


def _image_ref(value: str) -> str:
    if not images.IMAGE_REF_RE.match(value):
        raise argparse.ArgumentTypeError(f"not an image reference such as localhost/name:tag: {value!r}")
    return value


def _package(value: str) -> str:
    if not images.PACKAGE_RE.match(value):
        raise argparse.ArgumentTypeError(f"not a Debian package name: {value!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spindle", description="A Tangled spindle running GitHub Actions workflows."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the service (migrates the database first)")
    serve.add_argument("--no-migrate", action="store_true", help="do not bring the schema up to date first")
    sub.add_parser("migrate", help="bring the database schema up to date (idempotent)")

    repo = sub.add_parser("repo", help="manage the repos this spindle serves").add_subparsers(
        dest="repo_command", required=True
    )
    add = repo.add_parser("add", help="register a repo")
    add.add_argument("--knot", required=True, type=_host)
    add.add_argument("--repo-did", required=True, type=_did)
    add.add_argument("--name", required=True)
    add.add_argument("--owner", type=_did, help="DID allowed to trigger it (default: the repo DID)")
    add.add_argument(
        "--collaborator", action="append", default=[], type=_did, help="another DID allowed to trigger it"
    )
    add.add_argument(
        "--rkey",
        type=_rkey,
        help="record key (a TID) of the repo's sh.tangled.repo record: Tangled names the repo by "
        "at://<repo DID>/sh.tangled.repo/<rkey>",
    )
    ls = repo.add_parser("list", help="list registered repos")
    ls.add_argument("--json", action="store_true")
    rm = repo.add_parser("remove", help="unregister a repo (refused by running services within 1 s)")
    rm.add_argument("--knot", required=True, type=_host)
    rm.add_argument("--repo-did", required=True, type=_did)
    rm.add_argument("--name", required=True)

    secret = sub.add_parser(
        "secret", help="manage a repo's secrets (secrets.<KEY> of its runs)"
    ).add_subparsers(dest="secret_command", required=True)
    for name, text in (
        ("set", "add a secret; the value is read from standard input (refused if the key exists)"),
        ("list", "list a repo's secrets (keys, never values)"),
        ("remove", "remove a secret"),
    ):
        cmd = secret.add_parser(name, help=text)
        cmd.add_argument("--knot", required=True, type=_host)
        cmd.add_argument("--repo-did", required=True, type=_did)
        cmd.add_argument("--name", required=True)
        if name != "list":
            cmd.add_argument("key")
        else:
            cmd.add_argument("--json", action="store_true")
    rekey = secret.add_parser(
        "rekey",
        help="re-seal every stored secret under the current key (SPINDLE_SECRETS_KEY or the key file)",
    )
    rekey.add_argument(
        "--old-key-file",
        required=True,
        type=Path,
        help="a file holding the old key (base64, as the key file does)",
    )
    retention = sub.add_parser("retention", help="what the database keeps of finished runs").add_subparsers(
        dest="retention_command", required=True
    )
    retention.add_parser(
        "sweep",
        help="apply the SPINDLE_RETENTION_* rules once now (a running service also does, in the background)",
    )

    image = sub.add_parser("runner-image", help="the image jobs run in when they name none").add_subparsers(
        dest="image_command", required=True
    )
    build = image.add_parser(
        "build", help="build it from Debian packages with mmdebstrap and import it into the engine"
    )
    build.add_argument("--tag", type=_image_ref, help="name it this (default: SPINDLE_RUNNER_IMAGE)")
    build.add_argument(
        "--package",
        action="append",
        default=[],
        type=_package,
        help="a Debian package to install besides the default list (repeatable)",
    )
    return parser


async def _repo_command(settings: Settings, args: argparse.Namespace) -> int:
    engine = create_engine(settings.resolved_database_url)
    session_factory = create_sessionmaker(engine)
    try:
        async with session_factory() as session:
            if args.repo_command == "add":
                try:
                    repo = await repo_service.add(
                        session=session,
                        knot=args.knot,
                        did=args.repo_did,
                        name=args.name,
                        owner_did=args.owner or args.repo_did,
                        collaborators=args.collaborator,
                        rkey=args.rkey,
                    )
                except repo_service.RepoExists as exc:
                    print(f"spindle: {exc}", file=sys.stderr)
                    return 1
                print(f"registered {repo.knot} {repo.did} {repo.name} (owner {repo.owner_did})")
            elif args.repo_command == "list":
                repos = await repo_service.list_all(session=session)
                if args.json:
                    rows = [
                        {
                            "knot": r.knot,
                            "did": r.did,
                            "name": r.name,
                            "owner": r.owner_did,
                            "collaborators": r.collaborators,
                            "rkey": r.rkey,
                            "source": r.source,
                        }
                        for r in repos
                    ]
                    print(json.dumps(rows, indent=2))
                else:
                    for r in repos:
                        extra = f" collaborators={','.join(r.collaborators)}" if r.collaborators else ""
                        extra += f" rkey={r.rkey}" if r.rkey else ""
                        print(f"{r.knot}\t{r.did}\t{r.name}\towner={r.owner_did}\tsource={r.source}{extra}")
            elif args.repo_command == "remove":
                if not await repo_service.remove(
                    session=session, knot=args.knot, did=args.repo_did, name=args.name
                ):
                    print(
                        f"spindle: {args.knot} {args.repo_did} {args.name} is not registered", file=sys.stderr
                    )
                    return 1
                print(f"removed {args.knot} {args.repo_did} {args.name}")
    finally:
        await engine.dispose()
    return 0


async def _secret_command(settings: Settings, args: argparse.Namespace) -> int:
    engine = create_engine(settings.resolved_database_url)
    session_factory = create_sessionmaker(engine)
    cipher = SecretCipher.from_settings(settings)
    try:
        async with session_factory() as session:
            if args.secret_command == "rekey":
                old = SecretCipher(
                    key=decode_key(args.old_key_file.read_text(), source=str(args.old_key_file)),
                    key_file=args.old_key_file,
                )
                count = await secrets_service.rekey(session=session, old=old, new=cipher)
                print(f"re-sealed {count} secret(s) with key {cipher.current_key_id()}")
                return 0
            await secrets_service.check_stored_key(session=session, cipher=cipher)
            repo = await repo_service.find(session=session, knot=args.knot, did=args.repo_did, name=args.name)
            if repo is None:
                print(f"spindle: {args.knot} {args.repo_did} {args.name} is not registered", file=sys.stderr)
                return 1
            if args.secret_command == "set":
                key = secrets_service.check_key(args.key)
                text = sys.stdin.read()
                # One trailing newline is how `echo` and editors end the value, not part of it.
                value = secrets_service.check_value(
                    text[:-1] if text.endswith("\n") else text,
                    max_bytes=secrets_service.MAX_ADMIN_VALUE_BYTES,
                )
                owner = settings.owner or repo.owner_did
                await secrets_service.add(
                    session=session, cipher=cipher, repo=repo, key=key, value=value, created_by=owner
                )
                print(f"added {key} to {repo.did}/{repo.name}")
            elif args.secret_command == "list":
                rows = await secrets_service.list_for(session=session, repo=repo)
                if args.json:
                    print(
                        json.dumps(
                            [
                                {
                                    "key": r.key,
                                    "createdAt": r.created_at.isoformat(),
                                    "createdBy": r.created_by,
                                }
                                for r in rows
                            ],
                            indent=2,
                        )
                    )
                else:
                    for r in rows:
                        print(f"{r.key}\t{r.created_at.isoformat()}\t{r.created_by}")
            elif args.secret_command == "remove":
                await secrets_service.remove(
                    session=session, repo=repo, key=secrets_service.check_key(args.key)
                )
                print(f"removed {args.key} from {repo.did}/{repo.name}")
    except XrpcError as exc:
        print(f"spindle: {exc.message}", file=sys.stderr)
        return 1
    except (SecretsKeyError, SecretDecryptError) as exc:
        print(f"spindle: {exc}", file=sys.stderr)
        return 1
    finally:
        await engine.dispose()
    return 0


async def _check_secrets_key(settings: Settings) -> None:
    engine = create_engine(settings.resolved_database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            await secrets_service.check_stored_key(
                session=session, cipher=SecretCipher.from_settings(settings)
            )
    finally:
        await engine.dispose()


async def _retention_command(settings: Settings) -> int:
    """`retention sweep`: one sweep with the configured rules, what it deleted printed."""
    from app.runs.retention import RetentionSweeper

    engine = create_engine(settings.resolved_database_url)
    try:
        sweeper = RetentionSweeper(settings=settings, engine=engine)
        if not sweeper.enabled:
            print("retention is off: every SPINDLE_RETENTION_* rule is 0, nothing is deleted")
            return 0
        report = await sweeper.sweep()
    finally:
        await engine.dispose()
    if report.skipped:
        print("another spindle process is sweeping this database right now; nothing done")
        return 0
    deleted = ", ".join(f"{count} {table}" for table, count in report.deleted.items())
    print(f"deleted {deleted}; removed the logs of {report.logs_pruned} runs in {report.seconds:.1f} s")
    return 0


async def _runner_image_command(settings: Settings, args: argparse.Namespace) -> int:
    """`runner-image build`: always a fresh build (Debian's updates), named by its digest tag and --tag."""
    ref = args.tag or settings.runner_image
    image = images.DebianImage(images.split_ref(ref)[0], (*images.RUNNER_PACKAGES, *args.package))
    started = time.monotonic()
    try:
        handle = await container_engine.connect(settings)
    except container_engine.EngineNotFound as exc:
        print(f"spindle: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"engine: {handle.describe()}", flush=True)
        await images.build(
            handle.docker, image, progress=lambda line: print(line, flush=True), also_tag=[ref]
        )
        size = (await handle.docker.images.inspect(ref))["Size"]
    except images.ImageError as exc:
        print(f"spindle: {exc}", file=sys.stderr)
        return 1
    finally:
        await handle.close()
    print(f"{ref} ({image.tag}): {size / 1e6:.0f} MB, built in {time.monotonic() - started:.0f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = _settings()
    configure_logging(settings)
    masking.install_log_filter()
    if args.command == "migrate":
        migrate.upgrade(settings.resolved_database_url)
        print("database is up to date")
        return 0
    if args.command == "repo":
        migrate.upgrade(settings.resolved_database_url)
        return asyncio.run(_repo_command(settings, args))
    if args.command == "secret":
        migrate.upgrade(settings.resolved_database_url)
        return asyncio.run(_secret_command(settings, args))
    if args.command == "retention":
        migrate.upgrade(settings.resolved_database_url)
        return asyncio.run(_retention_command(settings))
    if args.command == "runner-image":
        return asyncio.run(_runner_image_command(settings, args))
    if args.command == "serve":
        try:
            settings.require_owner()
        except ValueError as exc:
            raise SystemExit(f"spindle: {exc}") from None
        if not args.no_migrate:
            migrate.upgrade(settings.resolved_database_url)
        try:
            asyncio.run(_check_secrets_key(settings))
        except SecretsKeyError as exc:
            raise SystemExit(f"spindle: {exc}") from None
        import uvicorn

        from app.main import create_app
        from app.server import raise_open_files_limit, uvicorn_options

        app = create_app(settings)
        # The process serves this app until it exits: what exists now (modules, the app) leaves the
        # collector's generations, so a full collection no longer walks all of it. Here, not in the
        # app's lifespan: it is the process's decision, and tests start many apps in one process.
        gc.collect()
        gc.freeze()
        # JSON: uvicorn's own loggers (start-up, errors, access lines) go through the root handler
        # too, rather than through the text handlers of uvicorn's default configuration.
        logging_options: dict[str, Any] = {"log_config": None} if settings.log_format == "json" else {}
        raise_open_files_limit()
        uvicorn.run(
            app,
            host=settings.listen_host,
            port=settings.listen_port,
            log_level=settings.log_level.lower(),
            **uvicorn_options(settings),
            **logging_options,
        )
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
