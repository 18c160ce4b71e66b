"""Transformer health in the loop (``checks.transformer``): ``transformer.jsonl``.

Every ``every`` steps (and after the first), :func:`babysit.nets.gpt.transformer_probe` runs
one extra eval-mode, no-grad forward of the GPT on the first :data:`PROBE_WINDOWS` windows of
the batch just trained on (``Trainer.batch``), with the attention weights formed explicitly.
Why a separate forward and not the training forward: the training forward uses fused
attention (``scaled_dot_product_attention``), which never forms the weights; switching it to
the explicit path for a sampled step would keep a (B, heads, T, T) tensor in the backward
graph, change the step's numbers (rounding, and dropout's random draws) so that turning the
check on would change the run, and cost a backward's worth of memory. The probe forward costs
a third of a step, on at most :data:`PROBE_WINDOWS` windows, once in ``every`` steps; it runs
after the optimizer step, so a record describes the weights after that step.

The statistics stay on the device until the epoch ends (no host sync between samples) and are
written then, one JSON object per sample (``babysit.rundir.json_line``: NaN / inf as null)::

    {"step": 50, "T": 64, "log_z": 4.1,
     "blocks": [{"entropy": [3.1, 2.9, 0.4, 3.0], "max_logit": 6.2, "max_logit_heads": [2.0, 3.1, 6.2, 1.9],
                 "rms": 1.3}, ...]}

``entropy``: per head, nats, averaged over the windows and the queries 1..T-1; ``max_logit``:
the block's largest |q.k|/sqrt(hs) (``max_logit_heads``: each head's); ``rms``: the residual stream's RMS per token after the
block; ``log_z``: the output logits' mean logsumexp. :func:`babysit.checks.transformer.transformer_findings`
reads them after the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from babysit.nets.gpt import transformer_probe
from babysit.rundir import json_line, truncate_jsonl
from babysit.train.loop import Callback, Trainer

# Windows the probe reads from the batch: the entropy is a mean over PROBE_WINDOWS * (T - 1)
# queries, plenty for a per-head mean, and the explicit (windows, heads, T, T) weights stay
# small (32 x 4 x 256 x 256 floats = 32 MB at a context of 256).
PROBE_WINDOWS = 32


class TransformerHealthCallback(Callback):
    """Samples :func:`~babysit.nets.gpt.transformer_probe` every ``every`` steps into ``path``.

    Example
    -------
    >>> import tempfile, torch
    >>> from babysit.data.batching import Batches
    >>> from babysit.nets.gpt import GPT
    >>> from babysit.rundir import read_jsonl
    >>> net = GPT(vocab=6, context=8, embed=8, layers=1, heads=2)
    >>> loss = lambda out, y: torch.nn.functional.cross_entropy(out.flatten(0, 1), y.flatten())
    >>> ids = torch.randint(0, 6, (32, 9))
    >>> path = Path(tempfile.mkdtemp()) / "transformer.jsonl"
    >>> trainer = Trainer(net, loss, torch.optim.SGD(net.parameters(), lr=0.1),
    ...                   callbacks=[TransformerHealthCallback(path, every=2)])
    >>> _ = trainer.fit(Batches(ids[:, :-1], ids[:, 1:], 8, torch.Generator().manual_seed(0)), epochs=1)
    >>> [r["step"] for r in read_jsonl(path)], len(read_jsonl(path)[0]["blocks"][0]["entropy"])
    ([1, 2, 4], 2)
    """

    def __init__(self, path: str | Path, *, every: int, windows: int = PROBE_WINDOWS):
        self.path = Path(path)
        self.every = every
        self.windows = windows
        self._pending: list[tuple[int, int, dict[str, torch.Tensor]]] = []

    def on_fit_start(self, trainer: Trainer) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate_jsonl(self.path, trainer.state.step)  # on resume: the steps after the checkpoint run again

    def on_batch_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        step = trainer.state.step
        if (step % self.every and step != 1) or trainer.batch is None:
            return
        ids = trainer.batch[0][: self.windows]  # (B, T) token ids
        self._pending.append((step, ids.shape[1], transformer_probe(trainer.model, ids)))

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        self.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        self.flush()

    def flush(self) -> None:
        """Write the samples taken since the last flush (one host transfer for all of them)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        stacked = {key: torch.stack([stats[key] for _, _, stats in pending])
                   for key in ("entropy", "max_logit", "rms", "log_z")}
        stacked["block_max_logit"] = stacked["max_logit"].amax(-1)  # (samples, layers, heads) -> (samples, layers)
        on_host = {key: value.tolist() for key, value in stacked.items()}
        lines = []
        for i, (step, T, _) in enumerate(pending):
            record: dict[str, Any] = {
                "step": step, "T": T, "log_z": on_host["log_z"][i],
                "blocks": [{"entropy": entropy, "max_logit": max_logit, "max_logit_heads": heads, "rms": rms}
                           for entropy, max_logit, heads, rms in zip(
                               on_host["entropy"][i], on_host["block_max_logit"][i], on_host["max_logit"][i],
                               on_host["rms"][i], strict=True)],
            }
            lines.append(json_line(record) + "\n")
        with self.path.open("a", encoding="utf-8") as handle:
            handle.writelines(lines)


__all__ = ["PROBE_WINDOWS", "TransformerHealthCallback"]
