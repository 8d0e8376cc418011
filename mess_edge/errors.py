"""The one error type for user mistakes.

Raise ``MessError`` for anything a user can fix (a wrong path, a bad option, an artifact that does not
belong with another). The CLI prints its message on one line and exits with status 2, no traceback.
Messages follow "got X; expected Y; try Z". ``assert`` stays for internal invariants.
"""


class MessError(Exception):
    """A user-facing error: its message is printed on one line by the CLI."""
