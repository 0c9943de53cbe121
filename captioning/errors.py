"""The one exception type for user mistakes.

Entry points catch :class:`UserError` and print its message as a single line
(no traceback) before exiting non-zero. The message must name the file or flag
at fault and say what to do next.
"""


class UserError(Exception):
    """A mistake the user can fix (bad path, bad flag, bad file); shown as one line."""
