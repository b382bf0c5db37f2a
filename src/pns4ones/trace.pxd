# The compiled build of trace.py (setup.py; Cython reads this file beside the .py): Trace
# as an extension type, its attributes C fields.  The same names as its __slots__
# (tests/test_compiled.py compares them); public: readable and writable from Python.
# cpdef: a C method of the send path, its arguments (and @cython.locals) typed with the
# values' classes, cimported as C* (docs/development.md, "The compiled send path").

from pns4ones.hub.interface cimport Delivery as CDelivery
from pns4ones.messages cimport SendRequest as CSendRequest


cdef class Trace:
    cdef public object _many
    cdef public object _many_total
    cdef public object _records
    cdef public object bodies
    cdef public object budget
    cdef public object recorded
    cdef public object size

    cpdef sent(self, now, source, peer, app_id, CSendRequest send, ttl, CDelivery delivery)
