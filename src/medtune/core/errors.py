"""Errors a user can fix; the CLI turns them into one line on stderr and exit code 2."""


class MedtuneInputError(ValueError):
    """Bad input the user can fix: a wrong file, value or combination, named in the message."""


class BackboneMismatchError(MedtuneInputError):
    """An adapter meets frozen backbone weights other than those it was trained on."""
