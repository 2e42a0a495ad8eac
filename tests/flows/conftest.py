"""Flow tests use the session's Prefect harness and a fresh state dir (tests/conftest.py)."""
