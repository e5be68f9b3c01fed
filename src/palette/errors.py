"""The exceptions a user sees as a message instead of a traceback."""

from typing import Callable


class PaletteError(Exception):
    """A problem with the user's input (a file, a flag, a checkpoint) that the message explains how to fix."""


class ArgumentError(PaletteError, ValueError):
    """A bad value of one named input: an API argument (``steps``, ``mask``) or a config field (``train.lr``).

    The library names what its caller passed; the command line names the flag that sets it instead
    (:func:`palette.cli.flags.flag_of`), so one check serves both without knowing who called it. Other inputs the
    message mentions are given in ``also`` and written ``{name}`` in ``problem``, so they are renamed alike. It is a
    ValueError too, as Python's own bad values are, so library callers may catch either.
    """

    def __init__(self, argument: str, problem: str, also: tuple[str, ...] = ()):
        self.argument, self.problem, self.also = argument, problem, also
        super().__init__(self.naming(argument))

    def __reduce__(self):
        # rebuilt from its parts: a launched run sends the main process's error to the others (broadcast_object_list)
        return type(self), (self.argument, self.problem, self.also)

    def naming(self, name: str, rename: Callable[[str], str] = str) -> str:
        """The message with the input called ``name`` (``--steps`` instead of ``steps``) and each of ``also``
        called ``rename(it)``."""
        problem = self.problem
        for other in self.also:  # not str.format: config keys have dots, and paths may hold braces
            problem = problem.replace(f"{{{other}}}", rename(other))
        return f"{name}{'' if problem.startswith((':', ',')) else ' '}{problem}"
