"""llora's catalog: artifacts, lineage, files and the enforced lifecycle.

Installed as the package ``llora_store`` (the directory is ``store/`` in the
repository). This layer never imports torch, transformers or peft: it is the
part every catalog command loads, and it must stay fast.

``Store`` and ``open_store`` (the ORM: SQLAlchemy + SQLModel, ~0.75 s to import) are imported on first use, so
that the errors, the rules and ``llora_store.lite`` (`llora run`'s light path, stdlib sqlite3) load without them.
"""

from typing import TYPE_CHECKING

from llora_store.errors import (  # noqa: F401
    Ambiguous,
    BadInput,
    Conflict,
    Corrupt,
    InvalidTransition,
    LloraError,
    NotFound,
    RuleViolation,
    SchemaOutOfDate,
    SchemaTooNew,
    UsageError,
    UserError,
)

if TYPE_CHECKING:
    from llora_store.catalog import Store, open_store  # noqa: F401


def __getattr__(name: str):
    """``Store`` and ``open_store`` from ``llora_store.catalog``, imported on first use (PEP 562)."""
    if name in ("Store", "open_store"):
        from llora_store import catalog

        return getattr(catalog, name)
    raise AttributeError(f"module 'llora_store' has no attribute {name!r}")
