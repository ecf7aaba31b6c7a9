"""An HTML report of a layer: every neuron with its evidence, as a static folder beside the run's outputs.

``write_report(pipeline, layer)`` renders it (:mod:`dnd.report.render`); ``dnd report`` and the end of ``dnd describe``
call it. Modules: :mod:`~dnd.report.evidence` (the run's artifacts), :mod:`~dnd.report.views` (what the pages show),
:mod:`~dnd.report.pictures` and :mod:`~dnd.report.thumbnails` (heat maps, crops, cached thumbnails),
:mod:`~dnd.report.plots` (distributions), :mod:`~dnd.report.comparison` (``--compare``); templates in ``templates/``.
"""
