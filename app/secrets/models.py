"""Secret values of served repos, stored sealed (app.secrets.crypto)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.database import Base, utcnow


class RepoSecret(Base):
    """One `secrets.<key>` of a served repo; removing the repo removes its secrets."""

    __tablename__ = "repo_secret"
    __table_args__ = (UniqueConstraint("repo_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repo_id: Mapped[int] = mapped_column(ForeignKey("repo.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(50))
    # version byte + nonce + AES-GCM ciphertext and tag; never the value in clear.
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    # Which key sealed it (crypto.key_id): a service started with another key refuses to start.
    key_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(2048))
