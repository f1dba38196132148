"""One exception type for problems a user can fix (bad config, missing file...).

The CLI prints its message without a traceback and exits with status 2.
"""


class DetoxflowError(Exception):
    """A user-facing error whose message names the culprit and the fix."""
