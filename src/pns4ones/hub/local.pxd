# The compiled build of local.py (setup.py; Cython reads this file beside the .py): _IbIndex and LocalHub
# as extension types, their attributes C fields.  The same names as their __slots__
# (tests/test_compiled.py compares them); public: readable and writable from Python.
# cpdef: a C method of the send path, its arguments (and @cython.locals) typed with the
# values' classes, cimported as C* (docs/development.md, "The compiled send path").

cimport cython

from pns4ones.hub.outbound cimport Outbound as COutbound
from pns4ones.hub.recovery cimport Recovery as CRecovery
from pns4ones.messages cimport Recipient as CRecipient


cdef class _IbIndex:
    cdef public object all
    cdef public object groups
    cdef public object users

cdef class LocalHub:
    cdef public object _apps
    cdef public object _count
    cdef public object _ibs
    cdef public object _members
    cdef public object _now
    cdef public object on_routed
    cdef public CRecovery recovery

    @cython.locals(ib=_IbIndex)
    cpdef route(self, app_id, CRecipient recipient, COutbound message)
    cpdef publish(self, app_id, CRecipient recipient, COutbound message)
