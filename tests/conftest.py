"""Shared pytest fixtures. Each fixture module under tests/fixtures/ owns one real component."""

import logging

pytest_plugins = [
    "tests.fixtures.audio",
    "tests.fixtures.s3",
    "tests.fixtures.ray_cluster",
    "tests.fixtures.prometheus",
]

logging.getLogger("headrouter").setLevel(logging.INFO)
