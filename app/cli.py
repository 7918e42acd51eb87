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

from pydantic import ValidationError

from app import migrate
from app.config import DID_RE, Settings, is_valid_host
from app.database import create_engine, create_sessionmaker
from app.engine.container import engine as container_engine
from app.engine.container import images
from app.repos import service as repo_service


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()]
        raise SystemExit("spindle: invalid configuration:\n" + "\n".join(lines)) from None


def _did(value: str) -> str:
    if not DID_RE.match(value):
        raise argparse.ArgumentTypeError(f"not a DID: {value!r}")
    return value


def _host(value: str) -> str:
    if not is_valid_host(value):
        raise argparse.ArgumentTypeError(f"not a host[:port] (no scheme or path): {value!r}")
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
    ls = repo.add_parser("list", help="list registered repos")
    ls.add_argument("--json", action="store_true")
    rm = repo.add_parser("remove", help="unregister a repo (refused by running services within 1 s)")
    rm.add_argument("--knot", required=True, type=_host)
    rm.add_argument("--repo-did", required=True, type=_did)
    rm.add_argument("--name", required=True)

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
                        }
                        for r in repos
                    ]
                    print(json.dumps(rows, indent=2))
                else:
                    for r in repos:
                        extra = f" collaborators={','.join(r.collaborators)}" if r.collaborators else ""
                        print(f"{r.knot}\t{r.did}\t{r.name}\towner={r.owner_did}{extra}")
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
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "migrate":
        migrate.upgrade(settings.resolved_database_url)
        print("database is up to date")
        return 0
    if args.command == "repo":
        migrate.upgrade(settings.resolved_database_url)
        return asyncio.run(_repo_command(settings, args))
    if args.command == "runner-image":
        return asyncio.run(_runner_image_command(settings, args))
    if args.command == "serve":
        try:
            settings.require_owner()
        except ValueError as exc:
            raise SystemExit(f"spindle: {exc}") from None
        if not args.no_migrate:
            migrate.upgrade(settings.resolved_database_url)
        import uvicorn

        from app.main import create_app
        from app.server import raise_open_files_limit, uvicorn_options

        app = create_app(settings)
        # The process serves this app until it exits: what exists now (modules, the app) leaves the
        # collector's generations, so a full collection no longer walks all of it. Here, not in the
        # app's lifespan: it is the process's decision, and tests start many apps in one process.
        gc.collect()
        gc.freeze()
        raise_open_files_limit()
        uvicorn.run(
            app,
            host=settings.listen_host,
            port=settings.listen_port,
            log_level=settings.log_level.lower(),
            **uvicorn_options(settings),
        )
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
