"""The error the command-line scripts report as one line naming the flag, with a non-zero exit."""


class UsageError(ValueError):
    """Bad input: reported as one line naming the flag, with a non-zero exit."""
