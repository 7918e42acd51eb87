"""Where each knot's event stream was last read, so a restart resumes without losing events."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from app.database import Base, utcnow


class KnotCursor(Base):
    __tablename__ = "knot_cursor"

    knot: Mapped[str] = mapped_column(String(300), primary_key=True)
    # Our own clock reading (unix ns) when the last recorded event arrived: frames carry none.
    cursor: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
