"""Alembic migrations of the controller's schema, applied by ``registry.db.create_schema``.

A new revision goes in ``versions/``; ``tests/unit/controller/registry/test_migrations.py`` fails
until the revisions build exactly the tables the code declares.
"""
