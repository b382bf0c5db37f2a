"""The admin web panel (PROTOCOL.md section 6): see :mod:`pns4ones.admin.app`."""
