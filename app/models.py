"""Every model, imported in one place for Alembic's autogenerate and the metadata."""

from app.auth.models import ServiceAuthJti
from app.database import Base
from app.engine.models import RepoTurn
from app.jetstream.models import CollaboratorGrant, JetstreamCursor, SpindleMember
from app.knot.models import KnotCursor
from app.repos.models import Repo
from app.runs.models import LogLine, Pipeline, StatusEvent, WorkflowRun
from app.secrets.models import RepoSecret

__all__ = [
    "Base",
    "ServiceAuthJti",
    "CollaboratorGrant",
    "JetstreamCursor",
    "KnotCursor",
    "SpindleMember",
    "LogLine",
    "Pipeline",
    "Repo",
    "RepoSecret",
    "RepoTurn",
    "StatusEvent",
    "WorkflowRun",
]
