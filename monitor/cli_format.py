"""How ``repwatch … --help`` reads: every option shows its default.

:class:`Parser` is the ``ArgumentParser`` of the whole command line; sub-parsers inherit it (and
so the formatter) through ``add_subparsers``, so a new sub-command gets the same help without
repeating ``formatter_class``.
"""

from __future__ import annotations

import argparse
from typing import Any


class DefaultsFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the help already says it.

    Required options, flags (``store_true``) and options with no default (``None``) show none:
    their help says what leaving them out means.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or action.required
            or not (action.option_strings or action.nargs in ("?", "*"))
        ):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` with :class:`DefaultsFormatter` unless told otherwise."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)
