"""candle.search: hyperparameter search on the workflow engine.

Spaces (:mod:`candle.search.space`), samplers (:mod:`candle.search.samplers`: random, Sobol,
grid, BoTorch), schedulers (:mod:`candle.search.schedulers`: FIFO, ASHA, median stopping), the
driver (:mod:`candle.search.driver`, ``python -m candle.search``) and the report
(:mod:`candle.search.report`).
"""

__all__: list[str] = []
