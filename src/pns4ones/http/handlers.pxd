# The compiled build of handlers.py (setup.py; Cython reads this file beside the .py): Handlers
# and _Batch as extension types, their attributes C fields.  The same names as their __slots__
# (tests/test_compiled.py compares them); public: readable and writable from Python.
# cpdef: a C method of the send path, its arguments (and @cython.locals) typed with the
# values' classes, cimported as C* (docs/development.md, "The compiled send path").

cimport cython

from pns4ones.http.calls cimport Call as CCall
from pns4ones.hub.interface cimport Delivery as CDelivery
from pns4ones.messages cimport SendRequest as CSendRequest
from pns4ones.metrics cimport NullMetrics as CNullMetrics


cdef class _Batch


cdef class Handlers:
    cdef public object _warn
    cdef public object core
    cdef public object expires_in_format
    cdef public object limiter
    cdef public object log_sends
    cdef public object max_batch
    cdef public CNullMetrics metrics
    cdef public object readiness
    cdef public object subscriptions

    cpdef sendmessage(self, CCall call)
    @cython.locals(send=CSendRequest)
    cpdef _sendmessage(self, app, CCall call, started)
    cpdef _sent(self, CDelivery delivery, CCall call, app, CSendRequest send, ttl, started)
    @cython.locals(batch=_Batch, send=CSendRequest)
    cpdef _sendmessages(self, app, call, started)
    cpdef _batch_sent(self, CDelivery delivery, _Batch batch, index, CSendRequest send, ttl)


cdef class _Batch:
    cdef public object accepted
    cdef public object app_id
    cdef public object now
    cdef public object peer
    cdef public object results
    cdef public object sessions
    cdef public object started


cpdef sent_answer(CDelivery delivery)
