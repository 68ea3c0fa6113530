"""The one exception type that means "the user gave us something we cannot use"."""


class LitSFTError(Exception):
    """Bad input from the user: a file, row, field or flag, and what to do about it.

    `cli_main` prints these as one short message and exits with status 2, instead of a stack trace from deep
    inside a library. Everything else is a bug and keeps its traceback.
    """
