"""The installed repwatch version, for ``repwatch --version`` and the webhook User-Agent."""

from __future__ import annotations

import functools
from importlib import metadata


@functools.cache
def version() -> str:
    """The version of the installed ``repwatch`` distribution (``0+unknown`` from a bare tree)."""
    try:
        return metadata.version("repwatch")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def user_agent() -> str:
    """``repwatch/<version>``: what outgoing requests (webhooks) call themselves."""
    return f"repwatch/{version()}"
