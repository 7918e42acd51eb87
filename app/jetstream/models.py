"""What the spindle learned from Tangled's records: its members, collaborator grants, its cursor."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.database import Base, utcnow


class JetstreamCursor(Base):
    """How far Jetstream has been read: the `time_us` of the last handled event (one row)."""

    __tablename__ = "jetstream_cursor"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    time_us: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class SpindleMember(Base):
    """An `sh.tangled.spindle.member` record of the owner naming this spindle: `subject` may
    have its repos served. (did, rkey) is the record, so that its deletion finds it."""

    __tablename__ = "spindle_member"
    __table_args__ = (UniqueConstraint("did", "rkey"), Index("ix_spindle_member_subject", "subject"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    did: Mapped[str] = mapped_column(String(2048))  # who wrote the record: the spindle's owner
    rkey: Mapped[str] = mapped_column(String(512))
    subject: Mapped[str] = mapped_column(String(2048))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CollaboratorGrant(Base):
    """An `sh.tangled.repo.collaborator` record: its author (the repo's owner) lets `subject`
    trigger and cancel the repo named by `repo_uri`. Kept whether or not the repo is served yet,
    so that a repo served later starts with its collaborators."""

    __tablename__ = "collaborator_grant"
    __table_args__ = (UniqueConstraint("did", "rkey"), Index("ix_collaborator_grant_repo_uri", "repo_uri"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    did: Mapped[str] = mapped_column(String(2048))
    rkey: Mapped[str] = mapped_column(String(512))
    subject: Mapped[str] = mapped_column(String(2048))
    repo_uri: Mapped[str] = mapped_column(String(3000))  # the repo's at-uri, or (2026) its own DID
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
