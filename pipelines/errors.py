"""User-facing errors: a bad recipe, a missing dataset, an unsafe file."""


class UserError(ValueError):
    """A problem with the user's input, not a bug.

    The command line prints ``error: <message>`` on one line and exits with status 2,
    without a traceback, so the message must name the file, key or value and the fix.
    """


def unknown_name(kind: str, name: str, valid) -> UserError:
    """Error for a registry lookup miss, listing the valid names."""
    return UserError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")
