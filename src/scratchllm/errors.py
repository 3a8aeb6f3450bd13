"""Errors a user can cause and fix.

`UserError` carries one line that says what went wrong and what to do. The CLI prints it as
`error: <message>` and exits with code 2; library callers can catch it. An `OSError` that the
machine causes (no permission, read-only or full disk, a file where a folder should be) is a user
error too: `os_error_message` says it in one line. `Aborted` is not an error but a stop the
user asked for twice (a second Ctrl-C or SIGTERM while training saves). Anything else that escapes
is a bug in scratchllm and keeps its traceback.
"""

import errno


class UserError(Exception):
    """A problem in the user's input (config, data, file, option); the message says how to fix it."""


class ConfigError(UserError, ValueError):
    """An invalid configuration value; the message names the field."""


class Aborted(KeyboardInterrupt):
    """A second stop signal while training finishes its step and saves: stop at once. `signum` is the
    signal, so the CLI exits as a shell reports a process it killed: 128 + signum (130 for SIGINT,
    143 for SIGTERM). A KeyboardInterrupt, so code that catches Ctrl-C catches it too.

    >>> Aborted(15).exit_code  # SIGTERM
    143
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


# What to do about each OSError the machine (not scratchllm) causes, by errno.
OS_ERROR_HINTS = {
    errno.EACCES: "choose a folder you may write to (or a file you may read)",
    errno.EPERM: "choose a folder you may write to (or a file you may read)",
    errno.EROFS: "write somewhere else",
    errno.ENOSPC: "free some space or write somewhere else",
    errno.EDQUOT: "free some space or write somewhere else",
    errno.EFBIG: "write somewhere else",
    errno.EEXIST: "a file stands where a folder is needed; remove it or choose another path",
    errno.ENOTDIR: "a file stands where a folder is needed; remove it or choose another path",
    errno.EISDIR: "a folder stands where a file is needed; give a file path",
    errno.ENOENT: "check the path",
    errno.ENAMETOOLONG: "choose a shorter path",
}


def os_error_message(e: OSError) -> str | None:
    """One line for an OSError the user can fix (see OS_ERROR_HINTS), or None for any other.

    >>> os_error_message(PermissionError(errno.EACCES, "Permission denied", "/x/y"))
    '/x/y: permission denied; choose a folder you may write to (or a file you may read)'
    """
    hint = OS_ERROR_HINTS.get(e.errno)  # type: ignore[arg-type]
    if hint is None:
        return None
    where = str(e.filename) if e.filename is not None else "a file"
    if getattr(e, "filename2", None) is not None:
        where += f" -> {e.filename2}"
    reason = (e.strerror or type(e).__name__).lower()
    return f"{where}: {reason}; {hint}"
