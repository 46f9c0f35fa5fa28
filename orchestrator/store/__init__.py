"""SQLAlchemy 2.0 models and repositories: all SQL lives here."""
