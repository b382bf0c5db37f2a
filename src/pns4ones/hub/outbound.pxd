# The compiled build of outbound.py (setup.py; Cython reads this file beside the .py): Outbound
# as an extension type, its attributes C fields.  The same names as its __slots__
# (tests/test_compiled.py compares them); public: readable and writable from Python.
# cpdef: a C method of the send path, its arguments (and @cython.locals) typed with the
# values' classes, cimported as C* (docs/development.md, "The compiled send path").

from pns4ones.wire cimport encode_frame


cdef class Outbound:
    cdef public object _frame
    cdef public object _frame_key
    cdef public object _message
    cdef public object _plaintext
    cdef public object _web
    cdef public object _web_text
    cdef public object frame_size
    cdef public object id

    cpdef addin_frame(self, key)
