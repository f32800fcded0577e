"""The chaos suite's settings (`make chaos`): production's, except that tenant deliveries may go to the
suite's own receiver on loopback. Nothing else differs, so the faults hit the production code paths."""

from converzia.settings.production import *  # noqa: F403

DELIVERY_ALLOW_PRIVATE_NETWORKS = True
