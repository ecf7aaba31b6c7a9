"""One module per stage of the method; each exposes ``SPEC`` (see :class:`dnd.pipeline.StageSpec`)."""
