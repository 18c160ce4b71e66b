"""Checks of the data before training: examples shared between splits, duplicates with
conflicting labels, classes far out of balance.

Leakage between splits (``split_leakage``)
    Every pair of splits is compared, train-val, train-test and val-test: for each example of
    the second split, is it in the first?

    - Exact duplicates: the bytes of each example, hashed, then compared byte for byte (no
      hash collision can make a false pair). The bytes hashed are those of the tensors the run
      trains on, after preprocessing: ``data.load`` keeps no raw copy. Every preprocessing step
      (center, standardize, whitening) is the same invertible affine map applied to each
      example alone, so two examples are identical after it exactly when they were before
      (whitening's matrix product may round the two differently in float64 before the cast
      to float32; such a pair is still found as a near duplicate at cosine 1.0).
    - Near duplicates: cosine similarity above :data:`NEAR_DUPLICATE_COSINE` after the run's
      preprocessing, each example centred on the training split's mean first (a common offset,
      all-positive pixels say, makes unrelated examples point the same way). Computed by blocks
      of matrix products (:data:`QUERY_BLOCK` x :data:`REFERENCE_BLOCK`), on the data's device,
      so 50k x 10k examples of 784 features take a block of memory, not a 50k x 10k matrix
      (``benchmarks/leakage.py``).

    Barz & Denzler 2020 ("Do we train on test data? Purging CIFAR of near-duplicates",
    arXiv 1902.00423) found 3.3% of CIFAR-10's test images with near-duplicates in its
    training set: a test score partly measures memory, not generalisation.

Conflicting duplicates (``conflicting_duplicates``)
    Examples of the training split identical (or above the same cosine) to another training
    example with a different label: the network cannot fit both, and at least one label is
    probably wrong.

Class balance (``class_imbalance``)
    Largest class over smallest in the training split above :data:`IMBALANCE_RATIO`. The
    ratio is Buda, Maki & Mazurowski's rho (2018, "A systematic study of the class imbalance
    problem in convolutional neural networks", arXiv 1710.05381), who find imbalance harmful
    to CNNs and plain accuracy misleading under it. The advice: ``loss_weights: balanced``
    (:func:`babysit.optim.losses.balanced_class_weights`) and balanced accuracy (the mean
    per-class recall, ``*_balanced_acc`` in summary.json).

What is skipped, and why: token ids (``data.source: text``). Windows cut from one text overlap
within a split by construction, the text source splits the text into contiguous parts so that
no window crosses two splits, and a cosine between token ids (categories, not magnitudes)
means nothing. Per-token targets (a language model's next characters) have no class balance
to fix: the text's letter frequencies are what the model must learn. A GAN (its own preflight)
has no held-out split.

Example
-------
>>> import torch
>>> from babysit.data import Split, Splits
>>> torch.manual_seed(0) and None
>>> x = torch.randn(200, 32)
>>> splits = Splits(train=Split(x[:150], torch.arange(150) % 3), val=None,
...                 test=Split(torch.cat([x[150:], x[:5]]), torch.arange(55) % 3),
...                 task="classification", num_classes=3, input_shape=(32,), target_dim=1)
>>> found, leakage = data_findings(splits)
>>> [f.id for f in found], leakage.counts["train-test"]
(['split_leakage'], {'exact': 5, 'near': 0})
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from babysit.checks.findings import Finding
from babysit.data import Splits
from babysit.data.streaming import SAMPLE_EXAMPLES
from babysit.rundir import save_npz, write_json

# Barz & Denzler 2020 (arXiv 1902.00423) call images near-duplicates when a human cannot tell
# them apart; in pixel space after preprocessing, 0.99 is an angle of 8 degrees. Measured
# (tests/test_data_checks.py): clean sklearn digits (babysit's split) has its closest cross-split
# pair at cosine 0.972 and MNIST-1D at 0.956, 0 pairs above the bar; digits copied with pixel noise
# of std 0.02 (2% of the 0..1 range) stay at >= 0.996 (seeds 0-4), std 0.03 at >= 0.991, and
# std 0.05 falls below: the bar finds copies a person would call the same image.
NEAR_DUPLICATE_COSINE = 0.99
# Below this many features a cosine above 0.99 is common between unrelated examples: for
# isotropic directions P(cos > 0.99) = I_{1-0.99^2}((D-1)/2, 1/2) / 2 is 4.5% at D = 2
# (spirals, blobs), 1.6e-7 at D = 8, 1.8e-14 at D = 16: under one chance pair among 50k x 10k.
# Lower-dimensional data is checked for exact duplicates only.
NEAR_MIN_FEATURES = 16
# A leaked fraction of a held-out split this large can move its accuracy by as much (each leaked
# example scored as if seen in training): a warning. Barz & Denzler's CIFAR-10 figure is 3.3%.
# Fewer are info: the pairs are listed, the score barely moves.
LEAK_WARN_FRACTION = 0.01
# Training examples in a conflicting pair, as a fraction of the training split: a warning from 5%,
# more than the whole label noise of a typical benchmark (Northcutt, Athalye & Mueller 2021,
# arXiv 2103.14749: at least 3.3% label errors on average over ten test sets). Fewer are info.
# CS231n's spirals have every arm start at the origin: 3 identical points under 3 labels, 1.4% of
# 300 examples' training split (info).
CONFLICT_WARN_FRACTION = 0.05
# Buda et al. 2018's rho (largest class / smallest), whose harm to CNNs they find grows with it;
# 10 is the bar. The shipped sets sit far below it (digits 1.05, MNIST-1D 1.04).
IMBALANCE_RATIO = 10.0
# blocks of the similarity matrix: 4096 x 8192 float32 = 128 MiB, plus the two normalised blocks
QUERY_BLOCK = 4096
REFERENCE_BLOCK = 8192
# The within-train search for near duplicates with different labels costs N^2 D / 2 multiply-adds.
# On a CPU it runs up to this many (22k examples of 784 features; about 10 s on 2 busy cores, where
# the 50k x 10k x 784 cross-split search took 19 s; MNIST-1D's is 2.6e8), on a GPU always; beyond
# it only identical conflicting duplicates are counted, and the finding and leakage.json say so.
SELF_NEAR_MAX_MACS_CPU = 2e11
MAX_LISTED_PAIRS = 100_000  # conflicting pairs listed at most (a pathological data set could have N^2)
MESSAGE_PAIRS = 3  # pairs quoted in a finding's message
EVIDENCE_PAIRS = 50  # pairs kept in a finding's evidence (leakage.json has them all)
SHOWN_PAIRS = 8  # pairs drawn side by side in the report (leakage.npz)
LEAKAGE_FILE = "leakage.json"
LEAKAGE_EXAMPLES_FILE = "leakage.npz"
REFERENCE = "Barz & Denzler 2020, arXiv 1902.00423: 3.3% of CIFAR-10's test images have duplicates in training"
SPLIT_PAIRS = (("train", "val"), ("train", "test"), ("val", "test"))
_SPLIT_WORDS = {"train": "training", "val": "validation", "test": "test"}


@dataclass
class Leakage:
    """What the duplicate search found. ``pairs``: one per example of a later split that has a
    duplicate in an earlier one (``a``/``index_a`` the earlier split and its closest example,
    ``b``/``index_b`` the duplicated example, ``cosine``, ``exact``, ``copies``: how many
    identical examples ``a`` holds, labels when the task has classes). ``conflicts``: pairs
    of training examples, duplicates with different labels. Indices are positions in the
    splits as the run holds them."""

    sizes: dict[str, int]
    features: int
    near_checked: bool
    pairs: list[dict[str, Any]] = field(default_factory=list)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    near_conflicts_checked: bool = False
    labels: bool = False

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """``{"train-test": {"exact": n, "near": m}, ...}`` for every pair of splits compared."""
        out = {f"{a}-{b}": {"exact": 0, "near": 0} for a, b in SPLIT_PAIRS if a in self.sizes and b in self.sizes}
        for pair in self.pairs:
            out[f"{pair['a']}-{pair['b']}"]["exact" if pair["exact"] else "near"] += 1
        return out

    def leaked_fraction(self, split: str) -> float:
        """The fraction of ``split``'s examples with a duplicate under the same label (or unlabelled) in an
        earlier split: those its score counts right as if unseen. A duplicate under another label is
        scored wrong instead (a conflict, not an optimistic score)."""
        leaked = {p["index_b"] for p in self.pairs if p["b"] == split and _same_label(p)}
        return len(leaked) / self.sizes[split] if self.sizes.get(split) else 0.0

    def shown(self) -> list[dict[str, Any]]:
        """The closest pairs (leaks first, then conflicts), at most :data:`SHOWN_PAIRS`: what the report draws."""
        leaks = sorted(self.pairs, key=lambda p: -p["cosine"])
        conflicts = sorted(({"a": "train", "b": "train", **c} for c in self.conflicts), key=lambda p: -p["cosine"])
        return (leaks + conflicts)[:SHOWN_PAIRS]

    def to_json(self) -> dict[str, Any]:
        """leakage.json: the settings, the counts and every pair."""
        return {"threshold": NEAR_DUPLICATE_COSINE, "features": self.features, "near_checked": self.near_checked,
                "near_conflicts_checked": self.near_conflicts_checked, "centred_on": "the training split's mean",
                "sizes": self.sizes, "counts": self.counts, "pairs": self.pairs, "conflicts": self.conflicts,
                "shown": self.shown(), "reference": REFERENCE}


# --------------------------------------------------------------------------- exact duplicates


def _byte_rows(x: Tensor) -> np.ndarray:
    """Each example's bytes, one row per example (N, bytes) uint8, on the CPU. -0.0 is written as 0.0
    first: equal values, different bytes (CS231n's spiral arms all start at (0, 0) and at (-0.0, 0))."""
    flat = x.detach().reshape(len(x), -1).cpu()
    if flat.dtype == torch.bfloat16:  # numpy has no bfloat16; the widening is exact and one-to-one
        flat = flat.float()
    if torch.is_floating_point(flat) and bool((torch.signbit(flat) & (flat == 0)).any()):
        flat = flat + 0.0  # -0.0 + 0.0 = +0.0 (IEEE 754); every other value unchanged
    return flat.contiguous().numpy().view(np.uint8).reshape(len(x), -1)


def _hash_table(rows: np.ndarray) -> dict[int, list[int]]:
    """hash of each row's bytes -> the rows with that hash (a bucket may mix rows that differ)."""
    table: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        table.setdefault(hash(row.tobytes()), []).append(i)
    return table


def exact_matches(reference: np.ndarray, query: np.ndarray,
                  table: dict[int, list[int]] | None = None) -> dict[int, list[int]]:
    """For each row of ``query`` (N, bytes) identical to rows of ``reference``, those rows' indices
    (hash lookup, then a byte-for-byte comparison).

    Example
    -------
    >>> ref = np.array([[1, 2], [3, 4], [1, 2]], dtype=np.uint8)
    >>> exact_matches(ref, np.array([[3, 4], [5, 6], [1, 2]], dtype=np.uint8))
    {0: [1], 2: [0, 2]}
    """
    table = _hash_table(reference) if table is None else table
    found: dict[int, list[int]] = {}
    for j, row in enumerate(query):
        data = row.tobytes()
        same = [i for i in table.get(hash(data), ()) if reference[i].tobytes() == data]
        if same:
            found[j] = same
    return found


def identical_groups(rows: np.ndarray, table: dict[int, list[int]] | None = None) -> list[list[int]]:
    """Groups of two or more identical rows, each group's indices ascending.

    Example
    -------
    >>> identical_groups(np.array([[1], [2], [1], [1]], dtype=np.uint8))
    [[0, 2, 3]]
    """
    table = _hash_table(rows) if table is None else table
    groups = []
    for bucket in table.values():
        if len(bucket) < 2:
            continue
        by_bytes: dict[bytes, list[int]] = {}
        for i in bucket:
            by_bytes.setdefault(rows[i].tobytes(), []).append(i)
        groups += [g for g in by_bytes.values() if len(g) > 1]
    return groups


# --------------------------------------------------------------------------- near duplicates


@contextlib.contextmanager
def _full_fp32_matmul() -> Iterator[None]:
    """Full float32 products on a GPU: TF32's 10-bit mantissa blurs cosines near 0.99 by ~1e-3."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def unit_rows(x: Tensor, center: Tensor) -> Tensor:
    """Examples flattened, centred on ``center`` and scaled to unit length, float32 (a zero row stays zero)."""
    return F.normalize(x.reshape(len(x), -1).float() - center.to(x.device), dim=1)


@torch.no_grad()
def nearest(query: Tensor, reference: Tensor, *, query_block: int = QUERY_BLOCK,
            reference_block: int = REFERENCE_BLOCK) -> tuple[Tensor, Tensor]:
    """For each row of ``query``, its largest cosine similarity to a row of ``reference`` (both unit
    rows, :func:`unit_rows`, on one device) and that row's index: ``(cosine (N,), index (N,))`` on
    the CPU. Computed block by block (``query_block`` x ``reference_block`` products), so memory
    stays at one block whatever the sizes.

    Example
    -------
    >>> import torch
    >>> cos, idx = nearest(unit_rows(torch.tensor([[0.0, 2.0, 0.1]]), torch.zeros(3)), torch.eye(3))
    >>> round(cos.item(), 3), idx.item()
    (0.999, 1)
    """
    best = torch.full((len(query),), -math.inf, device=reference.device)
    where = torch.zeros(len(query), dtype=torch.long, device=reference.device)
    with _full_fp32_matmul():
        for qs in range(0, len(query), query_block):
            q = query[qs:qs + query_block]
            value, index = best[qs:qs + len(q)], where[qs:qs + len(q)]  # views, updated in place
            for rs in range(0, len(reference), reference_block):
                top, at = (q @ reference[rs:rs + reference_block].T).max(1)
                better = top > value
                index[better] = at[better] + rs
                value[better] = top[better]
    return best.clamp(max=1.0).cpu(), where.cpu()


@torch.no_grad()
def similar_pairs(units: Tensor, threshold: float, labels: Tensor | None = None, *, block: int = QUERY_BLOCK,
                  limit: int = MAX_LISTED_PAIRS) -> list[tuple[int, int, float]]:
    """Every pair ``i < j`` of rows of ``units`` (:func:`unit_rows`) with cosine above ``threshold``
    and, given ``labels``, different labels: ``[(i, j, cosine)]``, at most ``limit``. Only the
    blocks on and above the diagonal are computed (each pair once).

    Example
    -------
    >>> import torch
    >>> x = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [1.0, 0.0]])
    >>> [(i, j) for i, j, _ in similar_pairs(unit_rows(x, torch.zeros(2)), 0.99, torch.tensor([0, 1, 1, 0]))]
    [(0, 1), (1, 3)]
    """
    found: list[tuple[int, int, float]] = []
    n = len(units)
    with _full_fp32_matmul():
        for qs in range(0, n, block):
            q = units[qs:qs + block]
            for rs in range(qs, n, block):
                sims = q @ units[rs:rs + block].T
                if rs == qs:
                    sims.triu_(1)  # j > i only (the rest set to 0, below any threshold that matters)
                hit = sims > threshold
                rows = hit.any(1).nonzero().flatten()
                if not len(rows):
                    continue
                hit = hit[rows]
                if labels is not None:
                    hit &= labels[qs + rows][:, None] != labels[rs:rs + block][None, :]
                p, r = hit.nonzero(as_tuple=True)
                cos = sims[rows[p], r].clamp(max=1.0)
                found += zip((rows[p] + qs).tolist(), (r + rs).tolist(), cos.tolist(), strict=True)
                if len(found) >= limit:
                    return found[:limit]
    return found


# --------------------------------------------------------------------------- the search


def _labels(splits: Splits) -> bool:
    """One class id per example (not per token): labels can conflict and classes be counted."""
    return splits.task == "classification" and splits.train.y.dim() == 1


def find_leakage(splits: Splits, threshold: float = NEAR_DUPLICATE_COSINE) -> Leakage | None:
    """Exact and near duplicates between every pair of splits and, for class labels,
    conflicting duplicates within the training split. None for token ids (see the module
    docstring). Runs on the splits' device.

    Example
    -------
    >>> import torch
    >>> from babysit.data import Split, Splits
    >>> x = torch.randn(100, 20)
    >>> splits = Splits(Split(x, torch.zeros(100).long()), None, Split(x[:3] + 1e-4, torch.zeros(3).long()),
    ...                 "classification", 2, (20,), 1)
    >>> [(p["index_b"], p["index_a"], p["exact"]) for p in find_leakage(splits).pairs]
    [(0, 0, False), (1, 1, False), (2, 2, False)]
    """
    if not torch.is_floating_point(splits.train.x):
        return None
    present = {name: getattr(splits, name) for name in ("train", "val", "test")}
    present = {name: s for name, s in present.items() if s is not None and len(s)}
    features = math.prod(splits.train.x.shape[1:])
    near = features >= NEAR_MIN_FEATURES
    labelled = _labels(splits)
    leakage = Leakage(sizes={name: len(s) for name, s in present.items()}, features=features, near_checked=near,
                      labels=labelled)
    rows = {name: _byte_rows(s.x) for name, s in present.items()}
    tables = {name: _hash_table(r) for name, r in rows.items() if name != "test"}
    units: dict[str, Tensor] = {}
    if near:  # one float32 copy of each split, centred on the training mean and scaled to unit length
        center = splits.train.x.reshape(len(splits.train), -1).float().mean(0)
        units = {name: unit_rows(s.x, center) for name, s in present.items()}
    for a, b in SPLIT_PAIRS:
        if a not in present or b not in present:
            continue
        exact = exact_matches(rows[a], rows[b], tables[a])
        cos, idx = nearest(units[b], units[a]) if near else (None, None)
        ya = present[a].y.cpu() if labelled else None
        yb = present[b].y.cpu() if labelled else None
        for j in range(len(present[b])):
            if j in exact:
                pair = {"index_a": exact[j][0], "cosine": 1.0, "exact": True, "copies": len(exact[j])}
            elif cos is not None and cos[j] > threshold:
                pair = {"index_a": int(idx[j]), "cosine": round(float(cos[j]), 6), "exact": False, "copies": 0}
            else:
                continue
            pair = {"a": a, "b": b, "index_b": j, **pair}
            if ya is not None and yb is not None:
                pair.update(label_a=int(ya[pair["index_a"]]), label_b=int(yb[j]))
            leakage.pairs.append(pair)

    if labelled:
        leakage.conflicts, leakage.near_conflicts_checked = _conflicts(splits, rows["train"], tables["train"],
                                                                      units.get("train"), threshold)
    return leakage


def _conflicts(splits: Splits, rows: np.ndarray, table: dict[int, list[int]], units: Tensor | None,
               threshold: float) -> tuple[list[dict[str, Any]], bool]:
    """Pairs of training examples that are duplicates with different labels (identical first,
    then near, from ``units``: None when too few features), and whether the near search ran
    (:data:`SELF_NEAR_MAX_MACS_CPU`)."""
    x, y = splits.train.x, splits.train.y
    labels = y.cpu().tolist()
    found: dict[tuple[int, int], dict[str, Any]] = {}
    for group in identical_groups(rows, table):
        for member in group:  # each member with a differently labelled twin: one pair (not all k^2)
            twin = next((g for g in group if labels[g] != labels[member]), None)
            if twin is not None:
                key = (min(member, twin), max(member, twin))
                found.setdefault(key, {"index_a": key[0], "index_b": key[1], "cosine": 1.0, "exact": True})
    work = len(x) ** 2 * math.prod(x.shape[1:]) / 2
    run_near = units is not None and (x.device.type == "cuda" or work <= SELF_NEAR_MAX_MACS_CPU)
    if units is not None and run_near:
        for i, j, cos in similar_pairs(units, threshold, y.to(units.device)):
            if (i, j) not in found and len(found) < MAX_LISTED_PAIRS:
                found[(i, j)] = {"index_a": i, "index_b": j, "cosine": round(cos, 6), "exact": False}
    pairs = sorted(found.values(), key=lambda p: (not p["exact"], p["index_a"], p["index_b"]))
    for pair in pairs:
        pair.update(label_a=labels[pair["index_a"]], label_b=labels[pair["index_b"]])
    return pairs, run_near


# --------------------------------------------------------------------------- findings


def _example(pair: dict[str, Any]) -> str:
    """``test #5 = train #812 (identical, labels 3 / 3)``: one pair in a message."""
    sign, how = ("=", "identical") if pair["exact"] else ("~", f"cosine {pair['cosine']:.4f}")
    labels = f", labels {pair['label_b']} / {pair['label_a']}" if "label_a" in pair else ""
    return f"{pair['b']} #{pair['index_b']} {sign} {pair['a']} #{pair['index_a']} ({how}{labels})"


def _same_label(pair: dict[str, Any]) -> bool:
    """A duplicate that gives the answer away: the same label (or no labels, a regression)."""
    return pair.get("label_a") == pair.get("label_b")


def leakage_findings(leakage: Leakage) -> list[Finding]:
    """``split_leakage`` and ``conflicting_duplicates`` from what :func:`find_leakage` found."""
    found: list[Finding] = []
    threshold = f"cosine similarity above {NEAR_DUPLICATE_COSINE} after preprocessing"
    near_note = "" if leakage.near_checked else (
        f" Only identical examples were looked for: {leakage.features} feature(s) are too few for a cosine "
        f"to tell near duplicates from neighbours (under {NEAR_MIN_FEATURES}).")
    if leakage.pairs:
        sentences = []
        for key, count in leakage.counts.items():
            total = count["exact"] + count["near"]
            if not total:
                continue
            a, b = key.split("-")
            these = [p for p in sorted(leakage.pairs, key=lambda p: -p["cosine"]) if p["a"] == a and p["b"] == b]
            other = sum(not _same_label(p) for p in these)
            sentences.append(
                f"{total} of {leakage.sizes[b]} {_SPLIT_WORDS[b]} examples ({total / leakage.sizes[b]:.1%}) duplicate "
                f"{_SPLIT_WORDS[a]} examples ({count['exact']} identical, {count['near']} with {threshold}"
                + (f"; {other} under a different label, which the model is scored wrong on, not right" if other else "")
                + "), e.g. " + "; ".join(_example(p) for p in these[:MESSAGE_PAIRS]) + ".")
        fractions = {name: leakage.leaked_fraction(name) for name in ("val", "test") if name in leakage.sizes}
        loud = any(f >= LEAK_WARN_FRACTION for f in fractions.values())
        scored = {n: f for n, f in fractions.items() if f > 0}
        optimism = (" The " + " and ".join(_SPLIT_WORDS[n] for n in scored) + " scores count the duplicates with "
                    f"the same label as unseen, so they come out optimistic, by up to {max(scored.values()):.1%} "
                    "of the examples." if scored else "")
        found.append(Finding(
            "split_leakage", "warning" if loud else "info",
            " ".join(sentences) + optimism + near_note,
            f"Remove the duplicates from the held-out split, or deduplicate the data before it is split; "
            f"{LEAKAGE_FILE} in the run directory lists every pair. For scale: {REFERENCE}. Below "
            f"{LEAK_WARN_FRACTION:.0%} of a split (same label) this is info, not a warning.",
            {"pairs_total": len(leakage.pairs), "counts": leakage.counts, "leaked_fraction": fractions,
             "threshold": NEAR_DUPLICATE_COSINE, "features": leakage.features, "near_checked": leakage.near_checked,
             "warn_fraction": LEAK_WARN_FRACTION, "pairs": leakage.pairs[:EVIDENCE_PAIRS], "file": LEAKAGE_FILE,
             "reference": REFERENCE}))
    if leakage.conflicts:
        involved = {i for c in leakage.conflicts for i in (c["index_a"], c["index_b"])}
        fraction = len(involved) / leakage.sizes["train"]
        exact = sum(c["exact"] for c in leakage.conflicts)
        skipped = "" if leakage.near_conflicts_checked or not leakage.near_checked else (
            "; identical examples only: the near-duplicate search within a training split this large is left to a GPU")
        shown = [{"a": "train", "b": "train", **c} for c in leakage.conflicts[:MESSAGE_PAIRS]]
        found.append(Finding(
            "conflicting_duplicates", "warning" if fraction >= CONFLICT_WARN_FRACTION else "info",
            f"{len(leakage.conflicts)} pair(s) of training examples are duplicates with different labels "
            f"({exact} identical, {len(leakage.conflicts) - exact} with {threshold}{skipped}), involving "
            f"{len(involved)} examples ({fraction:.1%} of the training split), e.g. "
            + "; ".join(_example(p) for p in shown) + ". The network cannot fit both labels of a pair.",
            f"Check the labels of these pairs and fix or drop the wrong ones ({LEAKAGE_FILE} lists every pair); "
            f"an input that truly carries two labels needs more features to tell them apart. Below "
            f"{CONFLICT_WARN_FRACTION:.0%} of the training split this is info, not a warning.",
            {"pairs_total": len(leakage.conflicts), "identical": exact, "examples": len(involved),
             "fraction": fraction, "threshold": NEAR_DUPLICATE_COSINE,
             "near_checked": leakage.near_conflicts_checked, "warn_fraction": CONFLICT_WARN_FRACTION,
             "pairs": leakage.conflicts[:EVIDENCE_PAIRS], "file": LEAKAGE_FILE}))
    return found


def class_imbalance(targets: Tensor, num_classes: int, *, class_names: Sequence[str] | None = None,
                    weighted: bool = False) -> Finding | None:
    """``class_imbalance`` when the training split's largest class outnumbers its smallest more
    than :data:`IMBALANCE_RATIO` to 1 (a class with no training example counts as 0: an
    unbounded ratio). ``weighted``: the loss already weights the classes (info, not a warning).

    Example
    -------
    >>> import torch
    >>> class_imbalance(torch.tensor([0] * 50 + [1] * 4), 2).evidence["ratio"]
    12.5
    >>> class_imbalance(torch.tensor([0] * 50 + [1] * 6), 2) is None
    True
    """
    counts = torch.bincount(targets.reshape(-1).long().cpu(), minlength=num_classes).tolist()
    largest, smallest = max(range(len(counts)), key=counts.__getitem__), min(range(len(counts)),
                                                                               key=counts.__getitem__)
    n_max, n_min = counts[largest], counts[smallest]
    ratio = n_max / n_min if n_min else math.inf
    if ratio <= IMBALANCE_RATIO:
        return None

    def name(k: int) -> str:
        return f"class {k}" + (f" ({class_names[k]!r})" if class_names is not None and k < len(class_names) else "")

    total = sum(counts)
    empty = [k for k, n in enumerate(counts) if n == 0]
    seen = (f"{name(smallest)} has no training example at all" + (f" ({len(empty)} classes have none)"
                                                                   if len(empty) > 1 else "")
            + ": the network can never learn to predict it"
            if not n_min else f"the smallest, {name(smallest)}, has {n_min}: {ratio:.1f} to 1")
    already = (" The loss already weights the classes (loss_weights: balanced)." if weighted else "")
    return Finding(
        "class_imbalance", "info" if weighted else "warning",
        f"The training split's classes are far out of balance (bar: {IMBALANCE_RATIO:g} to 1): the largest, "
        f"{name(largest)}, has {n_max} of {total} examples, and {seen}. Plain accuracy rewards the large "
        f"classes: always answering {name(largest)} scores {n_max / max(total, 1):.0%}.{already}",
        ("Judge the run by balanced accuracy (the mean per-class recall: summary.json's val_balanced_acc and "
         "test_balanced_acc), not accuracy; collect more examples of the rare classes if you can."
         if weighted else
         "Weight the loss by class with the spec key loss_weights: balanced (class c weighted N / (C n_c)), and "
         "judge the run by balanced accuracy (the mean per-class recall: summary.json's val_balanced_acc and "
         "test_balanced_acc) rather than accuracy; or collect more examples of the rare classes."),
        {"counts": counts, "ratio": ratio, "largest": largest, "smallest": smallest, "bar": IMBALANCE_RATIO,
         "weighted": weighted, "reference": "Buda, Maki & Mazurowski 2018, arXiv 1710.05381"})


def data_findings(splits: Splits, *, loss_weights: str = "none") -> tuple[list[Finding], Leakage | None]:
    """The data checks of a run's splits: ``split_leakage``, ``conflicting_duplicates`` and
    ``class_imbalance``, and the :class:`Leakage` found (None for token ids), for :func:`write_leakage`.
    Data streamed from disk is searched in the first :data:`~babysit.data.streaming.SAMPLE_EXAMPLES`
    examples of each split (the findings' evidence says so); the class counts use every label."""
    leakage = find_leakage(splits.bounded())
    found = leakage_findings(leakage) if leakage is not None else []
    if splits.streaming:
        for finding in found:
            finding.evidence["searched"] = (f"the first {SAMPLE_EXAMPLES} examples of each split "
                                            "(the data streams from disk)")
    if _labels(splits) and splits.num_classes is not None:
        imbalance = class_imbalance(splits.train.y, splits.num_classes, class_names=splits.class_names,
                                    weighted=loss_weights == "balanced")
        found += [imbalance] if imbalance is not None else []
    return found, leakage


def write_leakage(run_dir: str | Path, leakage: Leakage, splits: Splits,
                  display: Callable[[Tensor], Tensor] | None = None) -> None:
    """``leakage.json`` (every pair) and, when there are pairs, ``leakage.npz``: the shown pairs'
    examples ``a`` and ``b`` (k, *input_shape), in the data's units when ``display`` undoes the
    preprocessing, for the report's figure (it then needs no copy of the data)."""
    run_dir = Path(run_dir)
    write_json(run_dir / LEAKAGE_FILE, leakage.to_json())
    shown = leakage.shown()
    if not shown:
        return
    show = display or (lambda t: t)

    def gather(side: str) -> np.ndarray:
        rows = [getattr(splits, p[side]).x[p[f"index_{side}"]] for p in shown]
        return show(torch.stack(rows)).detach().float().cpu().numpy()

    save_npz(run_dir / LEAKAGE_EXAMPLES_FILE, a=gather("a"), b=gather("b"))


__all__ = ["IMBALANCE_RATIO", "LEAKAGE_EXAMPLES_FILE", "LEAKAGE_FILE", "NEAR_DUPLICATE_COSINE", "NEAR_MIN_FEATURES",
           "Leakage", "class_imbalance", "data_findings", "exact_matches", "find_leakage", "identical_groups",
           "leakage_findings", "nearest", "similar_pairs", "unit_rows", "write_leakage"]
