"""Lightning node simulators (LND REST, CLN clnrest) for tests; see lnsim.py and launch.py."""

from .launch import Sim, start_sim

__all__ = ["Sim", "start_sim"]
