"""Demo data for Converzia at any size (`manage.py seed_demo`): see docs/seed_demo.md."""

from portal.seeding.plan import SeedConfig
from portal.seeding.runner import (
    SeedError,
    SeedReport,
    analyze,
    database_is_empty,
    demo_credentials_reissue,
    seed_config,
    seed_demo,
)

__all__ = [
    "SeedConfig",
    "SeedError",
    "SeedReport",
    "analyze",
    "database_is_empty",
    "demo_credentials_reissue",
    "seed_config",
    "seed_demo",
]
