"""The one exception type that the CLI turns into a one-line error message."""


class UserError(Exception):
    """Bad input or a failed external step the user can act on.

    The message must name the file/field/asset and what was expected; the CLI prints it as one line
    (``error: <message>``) and exits with status 2, without a traceback.
    """
