"""Errors that the user can fix: the command line prints them as one message, no traceback.

`UserError` is a marker base. Each library error that a user causes (a bad config value, a
missing or corrupt checkpoint, a locked work directory, an unreadable input) subclasses it
together with the builtin type its callers already catch (ValueError, FileNotFoundError,
RuntimeError), so `except ValueError` keeps working. Anything else that escapes is a bug and
keeps its traceback.
"""


class UserError(Exception):
  """An error whose message says what to do; the CLI prints it without a traceback."""


class ConfigError(UserError, ValueError):
  """A config value that cannot work, found before anything is compiled or written."""
