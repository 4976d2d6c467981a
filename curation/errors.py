"""Error types shared by every folder.

`InputError` means "the input or configuration is wrong"; its message names the file, column or
key and says what to change. The CLI prints it without a traceback and exits with status 2.
"""


class InputError(ValueError):
    """Bad input data or configuration; the message says what to fix."""
