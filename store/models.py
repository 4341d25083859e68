"""All catalog tables, in one module, with one naming convention for constraints.

The Alembic migrations in ``llora_migrations`` create exactly these tables; a
test checks that ``upgrade head`` on an empty database matches this module.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import JSON, BigInteger, Column, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlmodel import Field, SQLModel

SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

KINDS = ("base", "dataset", "adapter", "merged", "compressed", "modifier", "router", "scenario-set", "layer-adapters")
# The CLI noun group that lists each kind.
GROUPS = {
    "base": "bases",
    "dataset": "datasets",
    "adapter": "adapters",
    "merged": "merged",
    "compressed": "compressed",
    "modifier": "modifiers",
    "router": "routers",
    "scenario-set": "scenarios",
    "layer-adapters": "layer-adapters",
}


def with_article(word: str) -> str:
    """``word`` with its indefinite article: "an adapter", "a base"."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Artifact(SQLModel, table=True):
    """One catalogued thing: a base, a dataset, an adapter, a merged checkpoint, ..."""

    __tablename__ = "artifact"

    id: str = Field(sa_column=Column(String(32), primary_key=True))
    kind: str = Field(sa_column=Column(String(16), nullable=False, index=True))
    name: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    state: str = Field(sa_column=Column(String(16), nullable=False, index=True))
    # Naive UTC timestamps (DateTime without zone works the same on SQLite and PostgreSQL).
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(), nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(), nullable=False))
    # sha256 over the artifact's payload files (see llora_store.files.content_hash).
    content_hash: Optional[str] = Field(default=None, sa_column=Column(String(64), index=True))
    # Content hash of the base this artifact was trained on or runs on (R3, R6).
    base_hash: Optional[str] = Field(default=None, sa_column=Column(String(64), index=True))
    # Quantization of the weights training saw, e.g. "nf4", "int8", "gguf-q4_0" (R4).
    quantization: Optional[str] = Field(default=None, sa_column=Column(String(32)))
    domain: Optional[str] = Field(default=None, sa_column=Column(String(64)))
    meta: dict[str, Any] = Field(default_factory=dict, sa_column=Column("metadata", JSON, nullable=False))


class Lineage(SQLModel, table=True):
    """A parent -> child edge. ``role`` says what the parent is to the child."""

    __tablename__ = "lineage"

    child_id: str = Field(
        sa_column=Column(String(32), ForeignKey("artifact.id", ondelete="RESTRICT"), primary_key=True)
    )
    parent_id: str = Field(
        sa_column=Column(String(32), ForeignKey("artifact.id", ondelete="RESTRICT"), primary_key=True, index=True)
    )
    role: str = Field(sa_column=Column(String(32), primary_key=True))


class ArtifactFile(SQLModel, table=True):
    """A payload file of an artifact, relative to its directory, with its hash."""

    __tablename__ = "artifact_file"

    artifact_id: str = Field(
        sa_column=Column(String(32), ForeignKey("artifact.id", ondelete="RESTRICT"), primary_key=True)
    )
    path: str = Field(sa_column=Column(String(512), primary_key=True))
    sha256: str = Field(sa_column=Column(String(64), nullable=False))
    bytes: int = Field(sa_column=Column(BigInteger(), nullable=False))
    # Set when discard deleted the file (R9): the row stays as a record.
    deleted_at: Optional[datetime] = Field(default=None, sa_column=Column(DateTime(), nullable=True))


class Event(SQLModel, table=True):
    """Append-only history: every creation and state transition of an artifact."""

    __tablename__ = "event"
    __table_args__ = (Index("ix_event_artifact_at", "artifact_id", "id"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    artifact_id: str = Field(
        sa_column=Column(String(32), ForeignKey("artifact.id", ondelete="RESTRICT"), nullable=False)
    )
    at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(), nullable=False))
    event: str = Field(sa_column=Column(String(32), nullable=False))
    from_state: Optional[str] = Field(default=None, sa_column=Column(String(16)))
    to_state: str = Field(sa_column=Column(String(16), nullable=False))
    command: str = Field(default="", sa_column=Column(String(256), nullable=False))
    reason: str = Field(default="", sa_column=Column(String(1024), nullable=False))


class Evaluation(SQLModel, table=True):
    """One eval of an artifact on a dataset. An observation, not a change of the
    artifact, so it may be recorded on a deployed (immutable, R7) artifact too."""

    __tablename__ = "evaluation"

    id: Optional[int] = Field(default=None, primary_key=True)
    artifact_id: str = Field(
        sa_column=Column(String(32), ForeignKey("artifact.id", ondelete="RESTRICT"), nullable=False, index=True)
    )
    dataset_id: Optional[str] = Field(
        default=None, sa_column=Column(String(32), ForeignKey("artifact.id", ondelete="RESTRICT"), nullable=True)
    )
    at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(), nullable=False))
    split: str = Field(sa_column=Column(String(16), nullable=False))
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class RequestLog(SQLModel, table=True):
    """One request served by `llora run` or `llora serve`: what was asked, what came back, how fast.
    Like evaluations, an observation: it may reference deployed (immutable, R7) artifacts."""

    __tablename__ = "request_log"

    id: Optional[int] = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(), nullable=False, index=True))
    base_id: str = Field(sa_column=Column(String(32), ForeignKey("artifact.id", ondelete="RESTRICT"), nullable=False))
    modifier_id: Optional[str] = Field(
        default=None,
        sa_column=Column(String(32), ForeignKey("artifact.id", ondelete="RESTRICT"), nullable=True, index=True),
    )
    engine: str = Field(sa_column=Column(String(32), nullable=False))
    client: str = Field(sa_column=Column(String(64), nullable=False))
    prompt: str = Field(sa_column=Column(Text, nullable=False))
    response: str = Field(sa_column=Column(Text, nullable=False))
    tokens_in: int = Field(sa_column=Column(Integer, nullable=False))
    tokens_out: int = Field(sa_column=Column(Integer, nullable=False))
    latency_ms: float = Field(sa_column=Column(Float, nullable=False))
    ttft_ms: Optional[float] = Field(default=None, sa_column=Column(Float, nullable=True))
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
