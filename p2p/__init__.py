"""The peer-to-peer protocol, sans I/O (STYLE.md 1): bytes in, events and bytes out.

Nothing here opens a socket, reads a clock or draws global randomness: the node's
shell (or the simulator) moves the bytes, and time and randomness are arguments.
"""
