"""The pure consensus core: types, codec, keys, state transition, block tree, engines.

Nothing in this package does I/O, reads the clock or draws global randomness
(shared/DESIGN.md section 2); import-linter enforces it.
"""
