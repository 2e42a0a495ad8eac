"""Adapters to external systems, one module each: MLflow (registry), DVC and S3 (versioning), the
prediction and feedback logs (predlog writes them; logstore reads, compacts and retires them), the
champion history and trigger ledger (history: JSON Lines files, or PostgreSQL in history_pg),
OpenTelemetry (tracing), git (provenance), and the wiring that builds them from the settings."""
