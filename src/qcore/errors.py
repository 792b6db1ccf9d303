"""The one exception type users see. Its message names what is wrong, in one line."""


class QCoreError(ValueError):
    """Bad input, a bad setting, a missing file or a corrupt artifact."""
