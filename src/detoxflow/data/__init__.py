"""Dataset recipes: a named config entry -> rows with a ``text`` field (see :mod:`.recipes`)."""
