"""The agent side of a call, one subpackage per backend.

Each backend keeps in one place its wire protocol without I/O (both ends: the bridge's client side and the
service's side, so its emulator is built on the same code) and its emulator; the call runner talks to every
backend through the same small neutral vocabulary.
"""
