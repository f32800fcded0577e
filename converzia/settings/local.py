"""Development settings: debug on, private delivery targets allowed."""

from converzia.settings.base import *  # noqa: F403
from converzia.settings.base import env

DEBUG = env.bool("DEBUG", default=True)
DELIVERY_ALLOW_PRIVATE_NETWORKS = env.bool("DELIVERY_ALLOW_PRIVATE_NETWORKS", default=True)

REST_FRAMEWORK = {
    **REST_FRAMEWORK,  # noqa: F405
    "DEFAULT_RENDERER_CLASSES": [
        "converzia.api.renderers.OrjsonRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
}
