# The compiled build of handlers.py (setup.py; Cython reads this file beside the .py): Handlers
# as an extension type, its attributes C fields.  The same names as its __slots__
# (tests/test_compiled.py compares them); public: readable and writable from Python.

cdef class Handlers:
    cdef public object _warn
    cdef public object core
    cdef public object expires_in_format
    cdef public object limiter
    cdef public object log_sends
    cdef public object max_batch
    cdef public object metrics
    cdef public object readiness
    cdef public object subscriptions
