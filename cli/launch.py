"""`lmforge run --nproc N`: the same command again in N processes of this machine, by torchrun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def torchrun_command(nproc: int, max_restarts: int, args: list[str]) -> list[str]:
    """torchrun with a rendezvous of its own on a free local port, starting `lmforge ARGS` in each
    process (-P: the working directory stays off sys.path, as in a sweep's trials)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}", "--no-python",
            sys.executable, "-P", "-m", "lmforge", *args]


def launch(nproc: int, max_restarts: int, args: list[str]) -> int:
    """Run `lmforge ARGS` in `nproc` processes; return torchrun's exit status.

    torchrun runs in a session of its own so that a Ctrl-C reaches it once, from here: it passes
    the signal to each process, which saves a checkpoint and stops, as a lone run does. Were it
    in the terminal's process group, the processes would get the signal twice and stop at once.
    """
    env = dict(os.environ)
    # the cores shared among the processes, as torchrun would not do by itself (it gives one each)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    process = subprocess.Popen(torchrun_command(nproc, max_restarts, args), env=env,
                               start_new_session=True)

    def forward(signum, frame) -> None:
        if process.poll() is None:
            process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
