"""Errors that a user can fix; the CLI prints them as one line and exits with status 2."""


class UserError(Exception):
    """Bad input the user can correct (unknown name, malformed file, missing data, bad pairing).

    The message must say what was expected, where, and how to fix it: it is all the user sees.
    """
