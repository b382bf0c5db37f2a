# The compiled build of handlers.py (setup.py; Cython reads this file beside the .py): Handlers
# and _Batch as extension types, their attributes C fields.  The same names as their __slots__
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

cdef class _Batch:
    cdef public object accepted
    cdef public object app_id
    cdef public object now
    cdef public object peer
    cdef public object results
    cdef public object sessions
    cdef public object started
