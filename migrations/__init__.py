"""Alembic migrations of the llora catalog (installed as ``llora_migrations``).

Found through ``importlib.resources`` from the installed package, never from
the working directory.
"""
