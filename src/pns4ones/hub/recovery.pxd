# The compiled build of recovery.py (setup.py; Cython reads this file beside the .py): Window and Recovery
# as extension types, their attributes C fields.  The same names as their __slots__
# (tests/test_compiled.py compares them); public: readable and writable from Python.
# cpdef: a C method of the send path, its arguments (and @cython.locals) typed with the
# values' classes, cimported as C* (docs/development.md, "The compiled send path").

cimport cython

from pns4ones.hub.outbound cimport Outbound as COutbound
from pns4ones.messages cimport Recipient as CRecipient


cdef class Window:
    cdef public object entries
    cdef public object floor

cdef class Recovery:
    cdef public object _forgotten_floor
    cdef public object _windows
    cdef public object last_id
    cdef public object limit
    cdef public object seconds

    @cython.locals(window=Window)
    cpdef record(self, app_id, CRecipient recipient, COutbound outbound, now)
