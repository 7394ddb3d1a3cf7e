"""The root of veil's exception hierarchy; every part derives its own errors from it.

The CLI turns a VeilError into one line on stderr and an exit code, never a traceback.
"""


class VeilError(Exception):
    """An error with a message a user can act on."""

    #: exit code the CLI uses for this error (1: refused or failed check).
    exit_code = 1
