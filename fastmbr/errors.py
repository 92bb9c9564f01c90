"""One exception type for everything the user can get wrong.

The CLI turns a FastmbrError into a single ``error: ...`` line and exit status 2, never a traceback.
The message must name the culprit: the file, the flag or the value.
"""


class FastmbrError(Exception):
    """A user-facing error; its message is one line that names what is wrong."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def require(condition: bool, message: str) -> None:
    """Raise FastmbrError(message) unless condition holds."""
    if not condition:
        raise FastmbrError(message)
