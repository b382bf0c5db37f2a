# The compiled build of txinternals.py (setup.py; Cython reads this file beside the .py): _Cork
# as an extension type, its attribute a C field.  The same names as its __slots__
# (tests/test_compiled.py compares them); public: readable and writable from Python.
# cpdef/cdef: C functions of the write path, their dicts typed (docs/development.md, "The
# compiled send path"); the transports' callers cimport send_now.

cimport cython


cdef class _Cork:
    cdef public dict held


@cython.locals(corked=dict)
cpdef send_now(transport, data)
cdef _send(transport, data)
cdef _uncork(dict corked)
