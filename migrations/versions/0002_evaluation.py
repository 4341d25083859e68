"""Evaluations: metrics of an artifact on a dataset split, recorded by `llora eval`.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evaluation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("artifact_id", sa.String(32), nullable=False),
        sa.Column("dataset_id", sa.String(32), nullable=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("split", sa.String(16), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["artifact_id"], ["artifact.id"], name="fk_evaluation_artifact_id_artifact",
                                ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["dataset_id"], ["artifact.id"], name="fk_evaluation_dataset_id_artifact",
                                ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name="pk_evaluation"),
    )
    op.create_index("ix_evaluation_artifact_id", "evaluation", ["artifact_id"])


def downgrade() -> None:
    op.drop_index("ix_evaluation_artifact_id", table_name="evaluation")
    op.drop_table("evaluation")
