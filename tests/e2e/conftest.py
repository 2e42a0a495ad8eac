from tests.flows.conftest import prefect_harness, settings, state  # noqa: F401  (same fixtures)
