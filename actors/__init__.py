"""peerpxe's sans-IO core: the decisions of every actor, free of the world.

Rule 1: nothing in this package performs I/O, reads a clock, starts a thread, draws global
randomness or imports a host (pykka, SimPy, zeroconf, transport, sim, peerpxe). Time comes in
as `now_s`, randomness from an injected `random.Random`, and every effect goes out as a
returned command (`actors.core`). `actors/ruff.toml` enforces the imports.
"""
