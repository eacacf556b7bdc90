"""User-facing errors of the trainer: the same ``UserError`` the data floor raises.

The command line prints ``error: <message>`` on one line and exits with status 2.
"""

from pipelines.errors import UserError, unknown_name

__all__ = ["UserError", "unknown_name"]
