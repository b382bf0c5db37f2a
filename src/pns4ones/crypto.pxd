# The compiled build of crypto.py (setup.py; Cython reads this file beside the .py): AesCbc
# as an extension type, its attributes C fields.  The same names as its __slots__
# (tests/test_compiled.py compares them); public: readable and writable from Python.
# cpdef: a C method of the send path (docs/development.md, "The compiled send path").

cdef class AesCbc:
    cdef public object _cipher
    cdef public list _idle
    cdef public bytes _iv
    cdef public bytes _key

    cpdef encrypt(self, plaintext)
