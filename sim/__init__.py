"""The deterministic simulator: many NodeCores on a virtual clock and a simulated network.

No event loop, no sockets, no wall clock inside a run: a heap of timed events, and
every random draw comes from generators seeded by the run seed, so a seed replays
byte for byte (DESIGN.md section 2, STYLE.md 6).
"""
