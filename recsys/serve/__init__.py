"""The model server (``recsys serve``): a trained run's model behind HTTP, with dynamic batching.

Floors, in reading order:

- ``features.py``: :class:`FeatureStore`, the run's event log indexed once; a request's rows (or
  sequence) cut strictly before its time, by the data pipeline's own collate.
- ``ranker.py``: pointwise rankers (dlrm, ...), TransAct V2 through ``rank_requests`` and M-FALCON
  for hstu_ranking; ``uic_ranker.py``: MIMN from the UIC's states; ``retriever.py``: exact top-K
  over the item table (hstu, sasrec).
- ``engine.py``: :class:`Engine`, a loaded run (model + store + scorer).
- ``requests.py``: JSON bodies -> typed requests, errors naming the field.
- ``batcher.py``: bounded queue, dynamic batches, deadlines, load shedding, draining.
- ``metrics.py``: Prometheus text; ``app.py``: the FastAPI app; ``cli.py``: ``recsys serve``.

Nothing here imports a server library at package import.
"""
