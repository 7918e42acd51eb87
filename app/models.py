"""Every model, imported in one place for Alembic's autogenerate and the metadata."""

from app.auth.models import ServiceAuthJti
from app.database import Base
from app.engine.models import RepoTurn
from app.knot.models import KnotCursor
from app.repos.models import Repo
from app.runs.models import LogLine, Pipeline, StatusEvent, WorkflowRun

__all__ = [
    "Base",
    "ServiceAuthJti",
    "KnotCursor",
    "LogLine",
    "Pipeline",
    "Repo",
    "RepoTurn",
    "StatusEvent",
    "WorkflowRun",
]
