"""pytest-benchmark suites: `pytest benchmarks --benchmark-enable` (the default run has them off).

Each timed call is one Tracker.process() over a prepared batch; packets per second are recorded in
extra_info so the JSON report carries Mpps and ns/packet next to pytest-benchmark's own timings.
"""
import numpy as np
import pytest


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(1)
