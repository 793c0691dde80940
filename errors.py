"""The one exception type for mistakes in the user's input.

Bad files, bad data and bad config raise `InputError` with a single line that
names the file / session / key, the value found, and the fix. The CLI prints it
and exits with code 2; any other exception is a bug and keeps its traceback.
"""


class InputError(Exception):
    """A problem with the user's files, data or configuration (exit code 2)."""

    exit_code = 2


def first_repeated(items):
    """The first item that appears again in `items` (a column named twice), or None."""
    seen = set()
    for item in items:
        if item in seen:
            return item
        seen.add(item)
    return None
