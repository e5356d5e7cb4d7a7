"""The one exception type for bad user input.

Entry points catch :class:`UserError` and print its message as a single line
(``error: …``) and exit with status 2, without a traceback. Leaf modules raise it
for input the user can fix (a missing data folder, an impossible flag value); a
bug raises anything else and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: the message says what is wrong and what to do, in one line."""
