"""Error types a user can cause. The CLI prints them as one line, never as a traceback."""


class UserError(Exception):
    """A problem with the user's input or options, explained in one line."""


class DecodeError(UserError):
    """A file that cannot be decoded as video (corrupt, truncated, empty, no video stream...)."""
