# The compiled build of calls.py (setup.py; Cython reads this file beside the .py): Call and Answer
# as extension types, their attributes C fields.  The same names as their __slots__
# (tests/test_compiled.py compares them); public: readable and writable from Python.
# cpdef: a C method of the send path (docs/development.md, "The compiled send path").

cdef class Call:
    cdef public object _args
    cdef public object authorization
    cdef public object body
    cdef public object method
    cdef public object path
    cdef public object peer
    cdef public object query
    cdef public object secure

    cpdef bearer_token(self)

cdef class Answer:
    cdef public object _headers
    cdef public object body
    cdef public object fields
    cdef public object status
