"""Errors a user can cause and fix.

`UserError` carries one line that says what went wrong and what to do. The CLI prints it as
`error: <message>` and exits with code 2; library callers can catch it. Anything else that
escapes is a bug in scratchllm and keeps its traceback.
"""


class UserError(Exception):
    """A problem in the user's input (config, data, file, option); the message says how to fix it."""


class ConfigError(UserError, ValueError):
    """An invalid configuration value; the message names the field."""
