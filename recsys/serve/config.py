"""The serve config: model-side settings of ``recsys serve`` (YAML in ``configs/serve/``, ``--config``).

::

    recsys serve --checkpoint RUN_DIR --config configs/serve/hstu_ranking.yaml kv_cache.num_pages=8192

The server's limits (batching, queue, deadline) are its flags (:class:`recsys.serve.app.ServeOptions`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recsys.serve.kv_cache import KVCacheConfig


@dataclass
class ServeConfig:
    """Args:
        kv_cache: the HSTU ranker's KV cache across requests (ignored by the other models).
    """

    kv_cache: KVCacheConfig = field(default_factory=KVCacheConfig)
