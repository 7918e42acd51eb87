"""The operator's registry of repos this spindle serves."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.database import Base, utcnow


class Repo(Base):
    """A repo the operator registered: (knot, did, name) and who may trigger it."""

    __tablename__ = "repo"
    __table_args__ = (UniqueConstraint("knot", "did", "name"), Index("ix_repo_did_rkey", "did", "rkey"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    knot: Mapped[str] = mapped_column(String(300))
    did: Mapped[str] = mapped_column(String(2048))
    name: Mapped[str] = mapped_column(String(300))
    owner_did: Mapped[str] = mapped_column(String(2048))
    collaborators: Mapped[list[str]] = mapped_column(JSON, default=list)
    # The record key (a TID) of the repo's `sh.tangled.repo` record, when known: Tangled names the
    # repo by `at://<did>/sh.tangled.repo/<rkey>`.
    rkey: Mapped[str | None] = mapped_column(String(512))
    # How it came to be served: "cli" (the operator's registry) or "jetstream" (Tangled's records).
    source: Mapped[str] = mapped_column(String(16), default="cli", server_default="cli")
    # The repo's own DID (2026 `sh.tangled.repo` records carry it as `repoDid`): current knots name
    # the repo by it alone in `sh.tangled.git.refUpdate`.
    repo_did: Mapped[str | None] = mapped_column(String(2048), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    def may_trigger(self, actor: str, spindle_owner: str | None) -> bool:
        return actor == self.owner_did or actor in self.collaborators or actor == spindle_owner
