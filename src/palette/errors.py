"""The one exception a user sees as a message instead of a traceback."""


class PaletteError(Exception):
    """A problem with the user's input (a file, a flag, a checkpoint) that the message explains how to fix."""
