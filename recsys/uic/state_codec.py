"""One user's :class:`~recsys.modules.mimn.MIMNState` row as bytes, and back.

The layout is fixed by the model's dims: the state's fields in :class:`MIMNState` order, each row
flattened, float32 little-endian, no header (the record's ``model_version`` says which model wrote it)::

    memory [m, Dm] | utilisation [m] | controller [Dc] | read [Dm] | induction [m, Ds]

so a state is ``4 * (m*Dm + m + Dc + Dm + m*Ds)`` bytes (656 for ``configs/mimn/synthetic.yaml``).
The batch helpers turn B rows into one batched state and back with one copy.

Example::

    codec = StateCodec.of(model)             # a MIMNRanker (or its arch, a MIMN)
    blobs = codec.encode(state)              # B states -> list of B bytes
    state = codec.decode(blobs)              # -> MIMNState with B rows
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from recsys.errors import DataError
from recsys.modules.mimn import MIMN, MIMNState

FIELDS = tuple(f.name for f in dataclasses.fields(MIMNState))
DTYPE = np.dtype("<f4")


@dataclass(frozen=True)
class StateCodec:
    """The byte layout of one user's state.

    Args:
        shapes: field name -> per-user shape (without the batch dimension), in :data:`FIELDS` order.
    """

    shapes: tuple[tuple[str, tuple[int, ...]], ...]

    @classmethod
    def of(cls, model: torch.nn.Module) -> "StateCodec":
        """The layout of a :class:`~recsys.models.mimn.MIMNRanker`'s (or a :class:`MIMN`'s) state."""
        arch = model if isinstance(model, MIMN) else getattr(model, "arch", None)
        if not isinstance(arch, MIMN):
            raise DataError(f"the UIC keeps MIMN states; {type(model).__name__} has no MIMN arch (use the zoo's 'mimn' model)")
        m, dm, dc, ds = arch.memory_slots, arch.memory_dim, arch.controller_dim, arch.induction_dim
        shapes = {"memory": (m, dm), "utilisation": (m,), "controller": (dc,), "read": (dm,), "induction": (m, ds)}
        return cls(tuple((name, shapes[name]) for name in FIELDS))

    @property
    def floats(self) -> int:
        """Floats per user."""
        return sum(math.prod(shape) for _, shape in self.shapes)

    @property
    def nbytes(self) -> int:
        """Bytes per user."""
        return self.floats * DTYPE.itemsize

    def describe(self) -> dict:
        """The layout as JSON: ``{"dtype": "float32-le", "bytes": n, "fields": [[name, shape], ...]}``."""
        return {"dtype": "float32-le", "bytes": self.nbytes, "fields": [[name, list(shape)] for name, shape in self.shapes]}

    # ------------------------------------------------------------------ batches
    def encode(self, state: MIMNState) -> list[bytes]:
        """B users' state -> B byte strings of :attr:`nbytes` each."""
        rows = self.to_matrix(state)  # [B, floats]
        return [row.tobytes() for row in rows]

    def decode(self, blobs: Sequence[bytes]) -> MIMNState:
        """B byte strings -> the batched state (float32, B rows)."""
        for i, blob in enumerate(blobs):
            if len(blob) != self.nbytes:
                raise DataError(
                    f"state {i} has {len(blob)} bytes; this model's layout {self.describe()['fields']} needs "
                    f"{self.nbytes}: it was written by a model of other dims (rebuild the states with its model_version)"
                )
        matrix = np.frombuffer(b"".join(blobs), dtype=DTYPE).reshape(len(blobs), self.floats)  # [B, floats]
        return self.from_matrix(matrix)

    def to_matrix(self, state: MIMNState) -> np.ndarray:
        """B users' state -> ``[B, floats]`` float32 little-endian rows."""
        b = state.batch_size
        parts = [getattr(state, name).detach().reshape(b, -1) for name, _ in self.shapes]  # [B, n_f] each
        return torch.cat(parts, dim=1).to(torch.float32).cpu().numpy().astype(DTYPE, copy=False)  # [B, floats]

    def from_matrix(self, matrix: np.ndarray) -> MIMNState:
        """``[B, floats]`` rows -> the batched state (its own memory, writable)."""
        b = matrix.shape[0]
        flat = torch.from_numpy(np.array(matrix, dtype=np.float32))  # [B, floats], a copy
        fields, start = {}, 0
        for name, shape in self.shapes:
            size = math.prod(shape)
            fields[name] = flat[:, start:start + size].reshape(b, *shape)
            start += size
        return MIMNState(**fields)

    # ------------------------------------------------------------------ one user
    def encode_row(self, state: MIMNState, row: int = 0) -> bytes:
        """Row ``row`` of a batched state -> bytes."""
        return self.encode(state.map(lambda t: t[row:row + 1]))[0]

    def decode_row(self, blob: bytes) -> MIMNState:
        """Bytes -> a state with one row."""
        return self.decode([blob])

    def as_lists(self, blob: bytes) -> dict[str, list]:
        """One user's state as nested JSON lists per field."""
        state = self.decode_row(blob)
        return {name: getattr(state, name)[0].tolist() for name, _ in self.shapes}
