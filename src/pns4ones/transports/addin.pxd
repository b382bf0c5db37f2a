# The compiled build of addin.py (setup.py; Cython reads this file beside the .py): it calls
# send_now as a C function (docs/development.md, "The compiled send path").

from pns4ones.txinternals cimport send_now
