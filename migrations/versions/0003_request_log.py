"""Request log: every `llora run` / `llora serve` request (like `llm logs`).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "request_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("base_id", sa.String(32), nullable=False),
        sa.Column("modifier_id", sa.String(32), nullable=True),
        sa.Column("engine", sa.String(32), nullable=False),
        sa.Column("client", sa.String(64), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.Column("tokens_in", sa.Integer(), nullable=False),
        sa.Column("tokens_out", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["base_id"], ["artifact.id"], name="fk_request_log_base_id_artifact",
                                ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["modifier_id"], ["artifact.id"], name="fk_request_log_modifier_id_artifact",
                                ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name="pk_request_log"),
    )
    op.create_index("ix_request_log_modifier_id", "request_log", ["modifier_id"])
    op.create_index("ix_request_log_at", "request_log", ["at"])


def downgrade() -> None:
    op.drop_index("ix_request_log_at", table_name="request_log")
    op.drop_index("ix_request_log_modifier_id", table_name="request_log")
    op.drop_table("request_log")
