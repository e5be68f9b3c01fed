"""The signals that ask a training run to stop cleanly: finish the step, write a checkpoint, return."""

from __future__ import annotations

import signal
import threading


class StopRequest:
    """SIGTERM (what schedulers send before they end a job, and what torchrun passes on) and SIGUSR1 (for SLURM's
    ``--signal`` when the training processes are srun's own tasks: torchrun itself dies of SIGUSR1) ask training to
    stop: :attr:`signal` names the one received. Installed only in the main thread (Python's rule for handlers);
    :meth:`uninstall` restores the previous handlers."""

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self):
        self.signal: str | None = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                number = getattr(signal, name, None)  # SIGUSR1 does not exist on Windows
                if number is not None:
                    self.previous[number] = signal.signal(number, self._handle)
        self.installed = bool(self.previous)

    def _handle(self, number, frame) -> None:
        self.signal = signal.Signals(number).name

    def uninstall(self) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}
