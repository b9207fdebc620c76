"""The protocol core: wire messages, trust decisions, task states, receipts, plans and skill schemas.

Values in, values out: nothing here touches a socket, a subprocess, SQLite or the clock (time is passed in).
Imports only :mod:`coworker._errors` and itself.
"""
