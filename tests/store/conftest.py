"""Every store test runs twice: on the default SQLite catalog and on PostgreSQL (``LLORA_DB_URL``).

Tests marked ``sqlite_only`` check SQLite itself (PRAGMAs, the file, the stdlib light path) and run once.
"""

from __future__ import annotations

import pytest


def pytest_generate_tests(metafunc):
    if "catalog_db" in metafunc.fixturenames:
        only = metafunc.definition.get_closest_marker("sqlite_only")
        metafunc.parametrize("catalog_db", ["sqlite"] if only else ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def catalog_starts_empty() -> bool:
    """False: the PostgreSQL catalog is an emptied database at the schema head; a module testing migrations
    overrides this to get a database of its own with no tables."""
    return False


@pytest.fixture(autouse=True)
def catalog_db(request, llora_home, monkeypatch, catalog_starts_empty) -> str:
    """The catalog's backend; for PostgreSQL, LLORA_DB_URL points at a fresh database of its own."""
    if request.param == "postgresql":
        fixture = "postgres_url" if catalog_starts_empty else "postgres_catalog_url"
        monkeypatch.setenv("LLORA_DB_URL", request.getfixturevalue(fixture))
    return request.param
