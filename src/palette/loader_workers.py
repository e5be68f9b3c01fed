"""A training DataLoader's worker processes, ended with the step that failed: killed at once, and their errors
reported as the one line they were raised with."""

from __future__ import annotations

import contextlib

from .errors import PaletteError


@contextlib.contextmanager
def loader_batches(loader):
    """The batches of a DataLoader; when the block fails, its worker processes are killed at once. They ignore SIGTERM
    (a scheduler signals the whole job, and the training process needs them to finish its step), so Python's exit,
    which terminates and then joins its child processes, would otherwise wait for them for ever. A PaletteError
    raised in a worker reaches the user as its own one line, without the worker's traceback torch wraps it in."""
    batches = iter(loader)
    try:
        yield batches
    except PaletteError as err:
        kill_workers(batches)
        raise PaletteError(worker_message(str(err))) from None
    except BaseException:
        kill_workers(batches)
        raise


def worker_message(text: str) -> str:
    """The message of an error as raised in a DataLoader worker, out of torch's "Caught ... in DataLoader worker
    process N. Original Traceback ..." wrapper (the text itself when it is not wrapped)."""
    if "DataLoader worker process" not in text or "Original Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    return last.split(": ", 1)[1] if last.startswith(f"{PaletteError.__module__}.PaletteError: ") else last


def kill_workers(batches) -> None:
    """Kill the worker processes of a DataLoader iterator (none for ``num_workers=0``). They are first taken off
    torch's watch for dying workers, whose SIGCHLD handler would raise over the error being reported."""
    workers = getattr(batches, "_workers", ())
    if getattr(batches, "_worker_pids_set", False):
        from torch.utils.data._utils import signal_handling

        signal_handling._remove_worker_pids(id(batches))
        batches._worker_pids_set = False
    for worker in workers:
        if worker.is_alive():
            worker.kill()
    for worker in workers:
        worker.join(timeout=10)
