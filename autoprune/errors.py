"""The one exception type the CLI turns into a one-line message."""


class AutopruneError(Exception):
    """A user-facing error: bad input, a missing file, an impossible request.

    The message names the offending key, path or value; the CLI prints it on
    one line and exits non-zero, without a traceback.
    """
