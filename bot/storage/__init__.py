"""Persistence: SQLAlchemy models, the async engine, migrations and repositories."""
