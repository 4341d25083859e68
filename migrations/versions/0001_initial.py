"""Initial catalog: artifacts, lineage, files and the append-only event history.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "artifact",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=True),
        sa.Column("base_hash", sa.String(64), nullable=True),
        sa.Column("quantization", sa.String(32), nullable=True),
        sa.Column("domain", sa.String(64), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_artifact"),
        sa.UniqueConstraint("name", name="uq_artifact_name"),
    )
    op.create_index("ix_artifact_kind", "artifact", ["kind"])
    op.create_index("ix_artifact_state", "artifact", ["state"])
    op.create_index("ix_artifact_content_hash", "artifact", ["content_hash"])
    op.create_index("ix_artifact_base_hash", "artifact", ["base_hash"])

    op.create_table(
        "lineage",
        sa.Column("child_id", sa.String(32), nullable=False),
        sa.Column("parent_id", sa.String(32), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.ForeignKeyConstraint(["child_id"], ["artifact.id"], name="fk_lineage_child_id_artifact", ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["parent_id"], ["artifact.id"], name="fk_lineage_parent_id_artifact", ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("child_id", "parent_id", "role", name="pk_lineage"),
    )
    op.create_index("ix_lineage_parent_id", "lineage", ["parent_id"])

    op.create_table(
        "artifact_file",
        sa.Column("artifact_id", sa.String(32), nullable=False),
        sa.Column("path", sa.String(512), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("deleted_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["artifact_id"], ["artifact.id"], name="fk_artifact_file_artifact_id_artifact", ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("artifact_id", "path", name="pk_artifact_file"),
    )

    op.create_table(
        "event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("artifact_id", sa.String(32), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("command", sa.String(256), nullable=False),
        sa.Column("reason", sa.String(1024), nullable=False),
        sa.ForeignKeyConstraint(["artifact_id"], ["artifact.id"], name="fk_event_artifact_id_artifact", ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name="pk_event"),
    )
    op.create_index("ix_event_artifact_at", "event", ["artifact_id", "id"])

    # The history is append-only: the database itself refuses edits and deletions.
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER event_append_only_{verb.lower()} BEFORE {verb} ON event "
                "BEGIN SELECT RAISE(ABORT, 'the event history is append-only'); END"
            )
    elif bind.dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION llora_event_append_only() RETURNS trigger AS $$ "
            "BEGIN RAISE EXCEPTION 'the event history is append-only'; END; $$ LANGUAGE plpgsql"
        )
        op.execute(
            "CREATE TRIGGER event_append_only BEFORE UPDATE OR DELETE ON event "
            "FOR EACH ROW EXECUTE FUNCTION llora_event_append_only()"
        )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS event_append_only_update")
        op.execute("DROP TRIGGER IF EXISTS event_append_only_delete")
    elif bind.dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS event_append_only ON event")
        op.execute("DROP FUNCTION IF EXISTS llora_event_append_only()")
    op.drop_table("event")
    op.drop_table("artifact_file")
    op.drop_table("lineage")
    op.drop_table("artifact")
