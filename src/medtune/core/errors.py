"""Errors a user can fix (one line on stderr, exit code 2), a full disk (one line, exit 1) and
an interrupted training run (one line, exit 128 + signal)."""

import errno


class MedtuneInputError(ValueError):
    """Bad input the user can fix: a wrong file, value or combination, named in the message."""


class BackboneMismatchError(MedtuneInputError):
    """An adapter meets frozen backbone weights other than those it was trained on."""


class DiskFullError(OSError):
    """No space left on the device (errno ENOSPC) while writing a folder; the message names it
    and says what was cleaned up. The CLI prints it as one line and exits with code 1."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)


class TrainingInterrupted(Exception):
    """Training stopped by SIGINT or SIGTERM; the message says how to resume.

    `exit_code` is 128 + the signal number (130 for SIGINT, 143 for SIGTERM); `show` is False
    in the processes of a DDP run other than global rank 0, which print nothing.
    """

    def __init__(self, message: str, signum: int, show: bool = True):
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        self.show = show
