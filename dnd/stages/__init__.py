"""One module per stage of the method, each exposing ``SPEC`` (:class:`dnd.stages.base.StageSpec`); the kernel they
share is :mod:`dnd.stages.base` and their order is :mod:`dnd.stages.registry`. A stage never imports another stage."""
