"""The model's weights in flat storage with golden copies and exact per-chunk checksums.

Verification checksums this store after every inference (a weight flip in normal memory is
found there) and Edit restores it from the golden copies, bit for bit.

`WeightStore` moves every floating-point parameter and buffer of the model into one flat buffer
per dtype (the tensors become views of it, so the model and any injector see the same live
storage), keeps a golden copy of that buffer (beside it, on the same device: on a CPU that is
host memory), and per chunk of `chunk` elements
the sum of the chunk read as 64-bit words (wrapping mod 2^64; integer addition is associative, so
any summation order gives the same sum, and no conversion pass is needed: 3x faster than summing
int32 views into int64). A flip of any bit changes its word by +-2^k with k < 64, so any single
flip changes its chunk's sum: the check is exact for one flip per chunk. Several flips in one
chunk cancel only when they pair up on the same bit of the same word position in opposite
directions and nothing else in that chunk changed (two random flips: about 1 in 128 x chunks).
That is why the runtime, once any chunk fails, compares *every* element with its golden copy
(`restore(None)`): a cancelling pair stays hidden only while it is the only corruption in the
whole model. `recover()` also compares every element exactly.

Repair copies the golden bits back (`copy_` of the integer view: bit-for-bit, NaN payloads and
-0.0 included) and reports which tensors and how many elements it restored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from save_ros.core import bits

ALIGN = 16  # elements: every tensor starts 64-byte aligned inside the flat buffer


@dataclass
class Slot:
    """Where one tensor lives in a flat buffer."""

    name: str
    group: int
    offset: int
    numel: int


@dataclass
class Repair:
    """What one repair restored: tensor name -> number of elements whose bits were wrong."""

    elements: dict[str, int] = field(default_factory=dict)

    @property
    def tensors(self) -> list[str]:
        """Names of the repaired tensors."""
        return list(self.elements)

    def merge(self, other: Repair) -> None:
        """Add another repair's counts."""
        for k, v in other.elements.items():
            self.elements[k] = self.elements.get(k, 0) + v


class _Group:
    """One flat buffer of one dtype, its golden copy and chunk checksums."""

    def __init__(self, dtype: torch.dtype, numel: int, chunk: int,
                 device: torch.device | str = "cpu") -> None:
        self.dtype = dtype
        self.chunk = chunk
        self.n_chunks = max(1, -(-numel // chunk))
        self.flat = torch.zeros(self.n_chunks * chunk, dtype=dtype, device=device)
        self.golden: torch.Tensor | None = None
        self.golden_sums: torch.Tensor | None = None
        self.slots: list[Slot] = []
        self.starts: list[int] = []
        if (chunk * self.flat.element_size()) % 8:
            raise ValueError(f"chunk={chunk} elements of {dtype} is not a whole number of "
                             "64-bit words; use a multiple of 8")
        self._live_words = self.words()  # the storage never moves: one view for good

    def iv(self, t: torch.Tensor | None = None) -> torch.Tensor:
        """Integer view of the flat buffer (or of `t`), shaped (chunks, chunk)."""
        return bits.int_view(self.flat if t is None else t).view(self.n_chunks, self.chunk)

    def words(self, t: torch.Tensor | None = None) -> torch.Tensor:
        """The flat buffer (or `t`) as 64-bit words, shaped (chunks, words per chunk)."""
        return (self.flat if t is None else t).view(torch.int64).view(self.n_chunks, -1)

    def seal(self) -> None:
        """Take the golden copy and its checksums from the current contents."""
        self._starts_t = torch.tensor(self.starts, dtype=torch.int64)
        self.golden = self.flat.clone()
        self.golden_sums = self.words(self.golden).sum(1)

    def bad_chunks(self, lo: int = 0, hi: int | None = None) -> list[int]:
        """Chunks in [lo, hi) whose sum differs from the golden sum."""
        if lo == 0 and (hi is None or hi >= self.n_chunks):  # the common case: two torch calls
            sums = self._live_words.sum(1)
            if torch.equal(sums, self.golden_sums):
                return []
            lo, hi = 0, self.n_chunks
        else:
            hi = self.n_chunks if hi is None else hi
            sums = self._live_words[lo:hi].sum(1)
        diff = sums != self.golden_sums[lo:hi]
        if not bool(diff.any()):
            return []
        return (diff.nonzero().flatten() + lo).tolist()

    def restore(self, chunk_ids: list[int] | None) -> dict[str, int]:
        """Copy golden bits back into the given chunks (all if None); count restored elements."""
        live, gold = self.iv(), self.iv(self.golden)
        if chunk_ids is None:
            ne = (live.view(-1) != gold.view(-1)).nonzero().flatten()
        else:
            ids = torch.as_tensor(chunk_ids, dtype=torch.int64, device=live.device)
            rows, cols = (live[ids] != gold[ids]).nonzero(as_tuple=True)
            ne = ids[rows] * self.chunk + cols
        if not ne.numel():
            return {}
        flat_live, flat_gold = live.view(-1), gold.view(-1)
        flat_live[ne] = flat_gold[ne]  # integer views: the exact golden bits
        # which tensor owns each restored element (alignment padding is never written by anyone)
        k = torch.searchsorted(self._starts_t.to(ne.device), ne, right=True) - 1
        counts: dict[str, int] = {}
        for slot_i, n in zip(*torch.unique(k, return_counts=True), strict=True):
            counts[self.slots[int(slot_i)].name] = int(n)
        return counts


class WeightStore:
    """Flat, checksummed, golden-backed storage of a model's floating-point weights."""

    def __init__(self, model: nn.Module, chunk: int = 256) -> None:
        self.model = model
        self.chunk = chunk
        named: dict[str, torch.Tensor] = {}
        for name, p in model.named_parameters():
            named[name] = p
        for name, b in model.named_buffers():
            if b.dtype.is_floating_point and b.dtype in bits.LAYOUTS:
                named[name] = b
        self.tensors = named
        # one flat buffer per (dtype, device); the golden copy sits beside it (same device)
        by_dtype: dict[tuple[torch.dtype, torch.device], list[str]] = {}
        for name, t in named.items():
            by_dtype.setdefault((t.dtype, t.device), []).append(name)
        self.groups: list[_Group] = []
        self.slots: dict[str, Slot] = {}
        with torch.no_grad():
            for (dtype, device), names in by_dtype.items():
                total = sum(-(-named[n].numel() // ALIGN) * ALIGN for n in names)
                g = _Group(dtype, total, chunk, device)
                off = 0
                for n in names:
                    t = named[n]
                    slot = Slot(n, len(self.groups), off, t.numel())
                    g.flat[off : off + t.numel()].copy_(t.detach().reshape(-1))
                    # same tensor object, new storage: the model, fx code and injectors all follow
                    t.set_(g.flat.untyped_storage(), off, t.shape, t.stride() if t.is_contiguous()
                           else torch.empty(t.shape).stride())
                    g.slots.append(slot)
                    g.starts.append(off)
                    self.slots[n] = slot
                    off += -(-t.numel() // ALIGN) * ALIGN
                g.seal()
                self.groups.append(g)
        self.nbytes = sum(t.numel() * t.element_size() for t in named.values())

    def golden(self, name: str) -> torch.Tensor:
        """The golden copy of one weight (a view of host memory: do not write to it)."""
        s = self.slots[name]
        g = self.groups[s.group]
        return g.golden[s.offset : s.offset + s.numel].view(self.tensors[name].shape)

    def chunks_of(self, names: list[str]) -> list[tuple[int, int]]:
        """(group, chunk) pairs that hold any element of the named tensors."""
        out: set[tuple[int, int]] = set()
        for n in names:
            s = self.slots[n]
            first, last = s.offset // self.chunk, (s.offset + s.numel - 1) // self.chunk
            out.update((s.group, c) for c in range(first, last + 1))
        return sorted(out)

    def n_chunks(self) -> int:
        """Chunks over all groups."""
        return sum(g.n_chunks for g in self.groups)

    def check(self, chunk_mask: list[torch.Tensor] | None = None, lo: int = 0,
              hi: int | None = None) -> list[tuple[int, int]]:
        """(group, chunk) pairs whose checksum fails; `chunk_mask[g]` keeps the checked ones.

        `lo`/`hi` select a window of global chunk numbers (for budgeted, rotating checks).
        """
        bad: list[tuple[int, int]] = []
        base = 0
        for gi, g in enumerate(self.groups):
            a, b = max(lo - base, 0), g.n_chunks if hi is None else min(hi - base, g.n_chunks)
            if a < b:
                for c in g.bad_chunks(a, b):
                    if chunk_mask is None or bool(chunk_mask[gi][c]):
                        bad.append((gi, c))
            base += g.n_chunks
        return bad

    def restore(self, chunks: list[tuple[int, int]] | None = None) -> Repair:
        """Restore the given chunks (every chunk if None) from the golden copy, bit-for-bit."""
        rep = Repair()
        with torch.no_grad():
            if chunks is None:
                for g in self.groups:
                    if not torch.equal(g.iv(), g.iv(g.golden)):
                        rep.merge(Repair(g.restore(None)))
                return rep
            per: dict[int, list[int]] = {}
            for gi, c in chunks:
                per.setdefault(gi, []).append(c)
            for gi, ids in per.items():
                rep.merge(Repair(self.groups[gi].restore(ids)))
        return rep

    def corrupted(self, names: list[str]) -> list[str]:
        """Which of the named weights differ from their golden copies (exact compare)."""
        out = []
        for n in names:
            t = self.tensors.get(n)
            if t is not None and not torch.equal(bits.int_view(t), bits.int_view(self.golden(n))):
                out.append(n)
        return out

    def chunk_mask(self, names: list[str]) -> list[torch.Tensor]:
        """Per group, a bool mask of the chunks that hold any of the named tensors."""
        masks = [torch.zeros(g.n_chunks, dtype=torch.bool) for g in self.groups]
        for gi, c in self.chunks_of(names):
            masks[gi][c] = True
        return masks

    def accept_current(self) -> None:
        """Take the current weights as the new golden copy (after a deliberate update)."""
        for g in self.groups:
            g.seal()
