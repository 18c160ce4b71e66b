"""What the runner does differently for the autoencoder, the GPT and other token models.

- :func:`adapt_splits`: an autoencoder's targets are its inputs (a regression onto every
  input value); token-id data (``data.source: text``) is refused by the kinds that take
  real-valued inputs, and a GPT is refused anything else.
- :func:`per_token`: whether the loss is applied at every position of a sequence
  (:class:`babysit.optim.losses.PerToken`): class ids (N, T), next-token targets.
- :func:`write_artifacts`: what the report shows of such a run besides curves:
  ``reconstructions.npz`` (autoencoder: test inputs and their reconstructions, in the
  data's units: the preprocessing undone),
  ``vocab.json`` (token data: the characters, for ``babysit sample``) and
  ``text_sample.json`` (gpt: text the trained model generates).

The GAN has a loop of its own (babysit.train.gan).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from babysit.config import RECURRENT_KINDS, Experiment
from babysit.data import Split, Splits
from babysit.errors import BabysitError

RECONSTRUCTIONS_SHOWN = 16  # test examples drawn with their reconstructions
SAMPLE_PROMPT_CHARS = 32  # the report's text sample continues this much of the test text
SAMPLE_TOKENS = 400
SAMPLE_TEMPERATURE = 0.8
TOKEN_KINDS = ("gpt", *RECURRENT_KINDS)  # kinds that read token ids (recurrent ones with model.embedding)


def per_token(splits: Splits) -> bool:
    """Class ids per position, (N, T): the loss applies at every position (next-token prediction)."""
    return splits.task == "classification" and splits.train.y.dim() > 1


def adapt_splits(spec: Experiment, splits: Splits) -> Splits:
    """The splits as ``spec.model.kind`` trains on them (see the module docstring).

    Example
    -------
    >>> from babysit.config import Experiment
    >>> from babysit import data
    >>> spec = Experiment(model={"kind": "autoencoder"}, data={"source": "digits"})
    >>> splits = adapt_splits(spec, data.load(spec.data))
    >>> splits.task, splits.target_dim, bool((splits.train.y == splits.train.x).all())
    ('regression', 64, True)
    """
    kind = spec.model.kind
    tokens = not torch.is_floating_point(splits.train.x)
    if kind == "gpt" and not tokens:
        raise BabysitError(f"model.kind: gpt models sequences of token ids; use data.source: text "
                           f"(got data.source: {spec.data.source})")
    if tokens and kind not in TOKEN_KINDS:
        raise BabysitError(f"model.kind: {kind} takes real-valued inputs, but data.source: {spec.data.source} "
                           f"gives token ids; use model.kind: gpt (or rnn / gru / lstm with model.embedding)")
    if kind != "autoencoder":
        return splits

    def self_targets(split: Split | None) -> Split | None:
        return None if split is None else Split(split.x, split.x)

    return dataclasses.replace(
        splits, train=self_targets(splits.train), val=self_targets(splits.val), test=self_targets(splits.test),
        task="regression", num_classes=None, target_dim=math.prod(splits.input_shape), class_names=None)


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to ``path`` as .npz atomically (a reader sees the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:  # a file object, so numpy does not append '.npz'
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_data_units(splits: Splits) -> Any:
    """``tensor -> tensor`` undoing the data's preprocessing (to draw examples in pixels)."""
    pre = splits.preprocessor
    return pre.inverse_transform if pre is not None and pre.fitted is not None else (lambda t: t)


def _shown_split(splits: Splits) -> Split:
    return next(s for s in (splits.test, splits.val, splits.train) if s is not None and len(s))


@torch.no_grad()
def write_artifacts(spec: Experiment, path: Path, model: nn.Module, splits: Splits) -> None:
    """Write the family's extra files into the run directory ``path`` (module docstring)."""
    was_training = model.training
    model.eval()
    try:
        if spec.model.kind == "autoencoder":
            x = _shown_split(splits).x[:RECONSTRUCTIONS_SHOWN]
            display = to_data_units(splits)
            save_npz(path / "reconstructions.npz", inputs=display(x).float().cpu().numpy(),
                     outputs=display(model(x)).float().cpu().numpy())
        if splits.class_names is not None and per_token(splits):
            (path / "vocab.json").write_text(json.dumps(splits.class_names) + "\n", encoding="utf-8")
            if spec.model.kind == "gpt":
                (path / "text_sample.json").write_text(json.dumps(text_sample(spec, model, splits)) + "\n",
                                                       encoding="utf-8")
    finally:
        model.train(was_training)


def text_sample(spec: Experiment, model: nn.Module, splits: Splits) -> dict[str, Any]:
    """Text the trained model writes after the start of the held-out text (seeded by ``spec.seed``)."""
    from babysit.data.text import decode
    from babysit.nets.gpt import generate

    window = _shown_split(splits).x[:1]
    prompt = window[:, :min(SAMPLE_PROMPT_CHARS, window.shape[1])]
    ids = generate(model, prompt, SAMPLE_TOKENS, splits.input_shape[0], temperature=SAMPLE_TEMPERATURE,
                   generator=torch.Generator().manual_seed(spec.seed))
    vocab = splits.class_names or []
    return {"prompt": decode(prompt[0].tolist(), vocab), "text": decode(ids[0, prompt.shape[1]:].tolist(), vocab),
            "temperature": SAMPLE_TEMPERATURE, "tokens": SAMPLE_TOKENS, "seed": spec.seed}


def sample_text(run_dir: str | Path, prompt: str = "", tokens: int = 200, *, temperature: float = 1.0,
                top_k: int | None = None, seed: int = 0) -> str:
    """Text a trained language-model run writes after ``prompt``: ``tokens`` characters, drawn
    at ``temperature`` (0: always the likeliest) among the ``top_k`` likeliest when given,
    seeded by ``seed``. Uses the run's best weights (else its last) and its vocabulary
    (``vocab.json``); returns the prompt followed by the new text. What ``babysit sample`` prints.

    Example
    -------
    >>> sample_text("runs/text-gpt", "Shall I", 100, temperature=0.8)  # doctest: +SKIP
    'Shall I compare thee ...'
    """
    from babysit import config as config_module
    from babysit import data as data_module
    from babysit import nets
    from babysit.data.text import decode, encode
    from babysit.nets.gpt import generate
    from babysit.train.checkpoint import load_checkpoint

    run_path = Path(run_dir)
    if not (run_path / "config.yaml").is_file():
        raise BabysitError(f"{run_path}: not a run directory (no config.yaml); train one with babysit train")
    spec = config_module.load(run_path / "config.yaml")
    if spec.model.kind not in TOKEN_KINDS:
        raise BabysitError(f"{run_path}: a {spec.model.kind} run; babysit sample continues text with a language "
                           f"model (model.kind gpt, or rnn / gru / lstm on data.source: text)")
    if tokens < 1:
        raise BabysitError(f"--tokens: must be >= 1, got {tokens}")
    if temperature < 0 or not math.isfinite(temperature):
        raise BabysitError(f"--temperature: must be >= 0 (0: always the likeliest character), got {temperature}")
    if top_k is not None and top_k < 1:
        raise BabysitError(f"--top-k: must be >= 1, got {top_k}")
    vocab_file = run_path / "vocab.json"
    if vocab_file.is_file():
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    else:  # a run that stopped before writing it: the vocabulary of its text
        vocab = data_module.load(spec.data, spec.seed).class_names
    if not vocab or spec.data.source != "text":
        raise BabysitError(f"{run_path}: not a language model over text (data.source: {spec.data.source})")
    checkpoint = next((p for p in (run_path / "checkpoints" / "best.pt", run_path / "checkpoints" / "last.pt")
                       if p.is_file()), None)
    if checkpoint is None:
        raise BabysitError(f"{run_path}: no checkpoint (checkpoints/best.pt or last.pt) to sample from")
    torch.manual_seed(seed)
    model = nets.build(spec.model, (spec.data.context,), len(vocab))
    model.load_state_dict(load_checkpoint(checkpoint)["model"])
    start = prompt or ("\n" if "\n" in vocab else vocab[0])  # an empty prompt starts a new line
    ids = torch.from_numpy(encode(start, vocab))[None]  # (1, t)
    out = generate(model, ids, tokens, spec.data.context, temperature=temperature, top_k=top_k,
                   generator=torch.Generator().manual_seed(seed))
    return prompt + decode(out[0, ids.shape[1]:].tolist(), vocab)


__all__ = ["adapt_splits", "per_token", "sample_text", "save_npz", "text_sample", "to_data_units", "write_artifacts"]
