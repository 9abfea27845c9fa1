"""The TransAct V2 request path as a library call: requests -> host arena -> device -> scores.

Below serving (no transport, no process): a request format that holds each user's sequence once
(:mod:`.request`), a reusable pinned host buffer moved to the device in one copy per batch
(:mod:`.arena`), the scoring of a batch (:mod:`.rank`) and its CUDA graphs (:mod:`.graphs`).
"""

from recsys.ranking.arena import Bucket, HostArena, TransferBytes
from recsys.ranking.rank import rank_requests
from recsys.ranking.request import RankRequest, RankRequestBatch, UserSequence

__all__ = ["Bucket", "HostArena", "RankRequest", "RankRequestBatch", "TransferBytes", "UserSequence", "rank_requests"]
