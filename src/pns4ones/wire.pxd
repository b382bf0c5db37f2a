# The compiled build of wire.py (setup.py; Cython reads this file beside the .py).
# cpdef: a C function of the send path, its locals (@cython.locals) typed with the classes
# they hold, cimported as C* (docs/development.md, "The compiled send path").

cimport cython

from pns4ones.crypto cimport AesCbc as CAesCbc


@cython.locals(aes=CAesCbc)
cpdef encode_frame(key, plaintext)
