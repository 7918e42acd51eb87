"""Token ids already accepted, shared by every process that uses the database."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from app.database import Base


class ServiceAuthJti(Base):
    """One accepted (iss, jti), kept until its token expires."""

    __tablename__ = "service_auth_jti"

    # sha256 of iss and jti: fixed width whatever the issuer sends, and no DIDs kept in clear.
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
