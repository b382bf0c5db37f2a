# The compiled build of local.py (setup.py; Cython reads this file beside the .py): _IbIndex and LocalHub
# as extension types, their attributes C fields.  The same names as their __slots__
# (tests/test_compiled.py compares them); public: readable and writable from Python.

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
    cdef public object recovery
