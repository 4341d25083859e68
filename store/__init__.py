"""llora's catalog: artifacts, lineage, files and the enforced lifecycle.

Installed as the package ``llora_store`` (the directory is ``store/`` in the
repository). This layer never imports torch, transformers or peft: it is the
part every catalog command loads, and it must stay fast.
"""

from llora_store.catalog import Store, open_store  # noqa: F401
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
