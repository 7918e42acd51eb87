"""The queue's own state: when each repo last had a run claimed (its turn), for fair claiming."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from app.database import Base, utcnow


class RepoTurn(Base):
    """A repo's last claim by any process: the repo served longest ago goes first (queue.next_runs)."""

    __tablename__ = "repo_turn"

    knot: Mapped[str] = mapped_column(String(300), primary_key=True)
    repo_did: Mapped[str] = mapped_column(String(2048), primary_key=True)
    repo_name: Mapped[str] = mapped_column(String(300), primary_key=True)
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
