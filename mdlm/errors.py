"""The one exception type that the CLI turns into a one-line error message."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none): for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class UserError(Exception):
    """Bad input or a failed external step the user can act on.

    The message must name the file/field/asset and what was expected; the CLI prints it as one line
    (``error: <message>``) and exits with status 2, without a traceback.
    """
