"""The language family: next-token models over text (``model.kind: gpt``, and rnn / gru / lstm
on ``data.source: text`` with ``model.embedding``), and sampling from them.

The data are token ids (characters of the text), the loss applies at every position, and
the run keeps ``vocab.json`` (the characters, for ``babysit sample``) and, for a GPT,
``text_sample.json`` (text the trained model writes after the start of the held-out text,
which the report shows). :func:`sample_text` is what ``babysit sample`` prints.

Example
-------
>>> from babysit.config import Experiment
>>> LANGUAGE.claims(Experiment(model={"kind": "gpt"}, data={"source": "text"}))
True
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from babysit import data as data_module
from babysit import nets
from babysit.checks.answers import saved_temperature
from babysit.config import RECURRENT_KINDS, Experiment
from babysit.data import Splits
from babysit.data.text import decode, encode
from babysit.errors import BabysitError
from babysit.families.protocol import RunContext
from babysit.families.standard import StandardFamily, per_token, shown_split
from babysit.nets.gpt import generate
from babysit.rundir import read_json, read_run, write_json
from babysit.train.checkpoint import load_checkpoint, load_weights

SAMPLE_PROMPT_CHARS = 32  # the report's text sample continues this much of the test text
SAMPLE_TOKENS = 400
SAMPLE_TEMPERATURE = 0.8


def text_sample(spec: Experiment, model: nn.Module, splits: Splits) -> dict[str, Any]:
    """Text the trained model writes after the start of the held-out text (seeded by ``spec.seed``)."""
    window = shown_split(splits).x[:1]
    prompt = window[:, :min(SAMPLE_PROMPT_CHARS, window.shape[1])]
    ids = generate(model, prompt, SAMPLE_TOKENS, splits.input_shape[0], temperature=SAMPLE_TEMPERATURE,
                   generator=torch.Generator().manual_seed(spec.seed))
    vocab = splits.class_names or []
    return {"prompt": decode(prompt[0].tolist(), vocab), "text": decode(ids[0, prompt.shape[1]:].tolist(), vocab),
            "temperature": SAMPLE_TEMPERATURE, "tokens": SAMPLE_TOKENS, "seed": spec.seed}


class LanguageFamily(StandardFamily):
    name = "language"

    def claims(self, spec: Experiment) -> bool:
        return spec.model.kind == "gpt" or (spec.model.kind in RECURRENT_KINDS and spec.data.source == "text")

    def adapt(self, spec: Experiment, splits: Splits) -> Splits:
        if spec.model.kind == "gpt" and torch.is_floating_point(splits.train.x):
            raise BabysitError(f"model.kind: gpt models sequences of token ids; use data.source: text "
                               f"(got data.source: {spec.data.source})")
        return splits

    @torch.no_grad()
    def artifacts(self, run: RunContext) -> None:
        spec, model, splits = run.spec, run.model, run.splits
        if splits.class_names is None or not per_token(splits):
            return
        write_json(run.path / "vocab.json", splits.class_names, indent=None)
        if spec.model.kind != "gpt":
            return
        was_training = model.training
        model.eval()
        try:
            write_json(run.path / "text_sample.json", text_sample(spec, model, splits), indent=None)
        finally:
            model.train(was_training)


LANGUAGE = LanguageFamily()


def sample_text(run_dir: str | Path, prompt: str = "", tokens: int = 200, *, temperature: float = 1.0,
                top_k: int | None = None, seed: int = 0, calibrated: bool = False) -> str:
    """Text a trained language-model run writes after ``prompt``: ``tokens`` characters, drawn
    at ``temperature`` (0: always the likeliest) among the ``top_k`` likeliest when given,
    seeded by ``seed``. Uses the run's best weights (else its last) and its vocabulary
    (``vocab.json``); returns the prompt followed by the new text. What ``babysit sample`` prints.
    ``calibrated``: draw at ``temperature`` times the temperature fitted on the run's validation
    tokens (calibration.json), so that ``temperature`` 1 draws from the calibrated next-token
    probabilities (Guo et al. 2017).

    Example
    -------
    >>> sample_text("runs/text-gpt", "Shall I", 100, temperature=0.8)  # doctest: +SKIP
    'Shall I compare thee ...'
    """
    run = read_run(run_dir)
    spec = run.experiment()
    if not LANGUAGE.claims(spec):
        raise BabysitError(f"{run.path}: a {spec.model.kind} run; babysit sample continues text with a language "
                           f"model (model.kind gpt, or rnn / gru / lstm on data.source: text)")
    if tokens < 1:
        raise BabysitError(f"--tokens: must be >= 1, got {tokens}")
    if temperature < 0 or not math.isfinite(temperature):
        raise BabysitError(f"--temperature: must be >= 0 (0: always the likeliest character), got {temperature}")
    if top_k is not None and top_k < 1:
        raise BabysitError(f"--top-k: must be >= 1, got {top_k}")
    vocab_file = run.path / "vocab.json"
    if vocab_file.is_file():
        vocab = read_json(vocab_file)
        if (not isinstance(vocab, list) or not all(isinstance(c, str) and len(c) == 1 for c in vocab)
                or len(set(vocab)) != len(vocab)):
            raise BabysitError(f"{vocab_file}: damaged; it must be a JSON list of distinct single characters")
    else:  # a run that stopped before writing it: the vocabulary of its text
        vocab = data_module.load(spec.data).class_names
    if not vocab or spec.data.source != "text":
        raise BabysitError(f"{run.path}: not a language model over text (data.source: {spec.data.source})")
    checkpoint = run.checkpoint()
    if checkpoint is None:
        raise BabysitError(f"{run.path}: no checkpoint (checkpoints/best.pt or last.pt) to sample from")
    torch.manual_seed(seed)
    model = nets.build(spec.model, (spec.data.context,), len(vocab))
    weights = load_checkpoint(checkpoint)
    try:
        load_weights(model, weights, checkpoint)
    except BabysitError as exc:
        if "does not fit" not in str(exc):
            raise
        raise BabysitError(f"{vocab_file.name} ({len(vocab)} characters) does not fit {checkpoint}: "
                           f"the vocabulary is not the one the network was trained over") from None
    if calibrated:  # logits / (t * T): t applies to the calibrated distribution
        temperature *= saved_temperature(run.path)
    start = prompt or ("\n" if "\n" in vocab else vocab[0])  # an empty prompt starts a new line
    ids = torch.from_numpy(encode(start, vocab))[None]  # (1, t)
    out = generate(model, ids, tokens, spec.data.context, temperature=temperature, top_k=top_k,
                   generator=torch.Generator().manual_seed(seed))
    return prompt + decode(out[0, ids.shape[1]:].tolist(), vocab)


__all__ = ["LANGUAGE", "LanguageFamily", "sample_text", "text_sample"]
