# The compiled build of interface.py (setup.py; Cython reads this file beside the .py): Delivery
# as an extension type, its attributes C fields; the @dataclass on it is Cython's, which makes
# the same methods (its own __eq__ and __repr__ stand).  The same names as its __slots__
# (tests/test_compiled.py compares them), in the order of its fields (Cython's dataclass takes
# that order from here); public: readable and writable from Python.

cdef class Delivery:
    cdef public object sessions
    cdef public object users
    cdef public object stored
    cdef public object dropped
    cdef public object message_id
    cdef public object reached
