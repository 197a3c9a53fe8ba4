"""Shared test set-up: Prefect runs against a throwaway home and the in-process test harness;
nothing reaches the network."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="t2vsim-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def prefect_harness():
    """A real (temporary, local) Prefect backend for tests that run flows."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def pg_url():
    """URL of a real PostgreSQL server (scripts/test.sh starts one); tests skip without it."""
    url = os.environ.get("T2VSIM_TEST_PG_URL")
    if not url:
        pytest.skip("T2VSIM_TEST_PG_URL not set (scripts/test.sh starts a PostgreSQL server)")
    return url
