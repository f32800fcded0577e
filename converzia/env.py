"""The single environment reader for every settings module."""

import environ
from django.core.exceptions import ImproperlyConfigured

env = environ.Env()


def require(name: str) -> str:
    """Return a mandatory setting or refuse to start, naming the missing variable."""
    value = env.str(name, default="")
    if not value:
        raise ImproperlyConfigured(f"The environment variable {name} must be set in production.")
    return value
