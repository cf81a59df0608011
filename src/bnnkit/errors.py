"""The one exception type that reaches users as a single line, never a traceback."""


class BnnkitError(Exception):
    """A problem the user can fix: bad input, missing data, unknown name.

    The CLI prints ``error: <message>`` and exits with status 2; library callers
    catch it like any other exception.
    """
