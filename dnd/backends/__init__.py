"""Heavy models behind small interfaces (one module per role: captioners, llms, generators, embedders, targets),
loaded lazily and once per run by :class:`dnd.backends.container.Backends`."""
