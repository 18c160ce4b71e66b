"""Recurrent networks (``model.kind: rnn | gru | lstm``) on torch's ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM``.

Two modes:

- **Sequence classification** (real-valued inputs): x (B, *input_shape) is read as a
  sequence (B, T, F) (see :func:`sequence_layout`; MNIST-1D's 40 samples are 40 steps of one
  scalar) -> one recurrent layer per width in ``model.hidden`` -> the last layer's final
  hidden state (B, H), both directions' concatenated when ``model.bidirectional`` (B, 2H)
  -> Linear -> (B, output_dim).
- **Next-token language modelling** (``model.embedding`` set): x (B, T) int64 token ids ->
  Embedding(V, E) -> the recurrent layers -> Linear at every position -> logits (B, T, V)
  with V = output_dim, the vocabulary. Position t sees tokens 0..t only, so the model
  predicts token t+1; bidirectional is refused here (it would read the answer).

The cells: Elman's (1990) ``rnn`` with ``model.activation`` tanh (the default for this kind)
or relu; the ``gru`` of Cho et al. (2014); the ``lstm`` of Hochreiter & Schmidhuber (1997)
with forget gates (Gers et al. 2000), its forget-gate bias set to 1 (Jozefowicz, Zaremba &
Sutskever 2015: it keeps memories by default early in training, and helps).

Each width of ``model.hidden`` is its own single-layer module (``rnn.0``, ``rnn.1``, ...), so
widths may differ and the monitors see each layer's ``weight_ih`` / ``weight_hh`` (the input
and recurrent weights) and its hidden-state sequence apart. ``model.dropout`` is applied
between layers and before the head. The recurrent weights keep torch's initialisation
U(-1/sqrt(H), 1/sqrt(H)); ``model.init: orthogonal`` makes each gate's recurrent matrix
orthogonal instead (Saxe et al. 2014; Le, Jaitly & Hinton 2015 for relu rnns). Other
``model.init`` schemes apply to the Linear head.

Gradient clipping is on for these kinds unless the spec says otherwise
(``optimizer.grad_clip: 1.0``; Pascanu, Mikolov & Bengio 2013, "On the difficulty of training
recurrent neural networks": a norm clip bounds the steps that exploding gradients cause).

Example
-------
>>> import torch
>>> from babysit.config import ModelSpec
>>> net = build_recurrent(ModelSpec(kind="gru", hidden=[16]), (40,), 10)  # MNIST-1D as a sequence
>>> net(torch.randn(3, 40)).shape
torch.Size([3, 10])
>>> lm = build_recurrent(ModelSpec(kind="lstm", hidden=[32], embedding=8), (20,), 65)
>>> lm(torch.randint(0, 65, (3, 20))).shape  # next-token logits at every position
torch.Size([3, 20, 65])
"""

from __future__ import annotations

import torch
from torch import nn

from babysit.config import ModelSpec
from babysit.errors import BabysitError

CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
GATES = {"rnn": 1, "gru": 3, "lstm": 4}  # blocks stacked in weight_hh: lstm (i, f, g, o), gru (r, z, n)


def sequence_layout(input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(steps T, features per step F) for an example of ``input_shape``.

    (L,) -> L steps of one value; (C, L) with C < L and C <= 16 -> L steps of C channels (a
    multichannel signal, as the conv nets read it); other (H, W) -> H rows of W values (the
    classic "image rows as a sequence"); (C, H, W) -> H rows of C * W values.

    Example
    -------
    >>> sequence_layout((40,)), sequence_layout((3, 100)), sequence_layout((8, 8)), sequence_layout((1, 8, 8))
    ((40, 1), (100, 3), (8, 8), (8, 8))
    """
    if len(input_shape) == 1:
        return input_shape[0], 1
    if len(input_shape) == 2:
        a, b = input_shape
        return (b, a) if a < b and a <= 16 else (a, b)
    if len(input_shape) == 3:
        c, h, w = input_shape
        return h, c * w
    raise BabysitError(
        f"model.kind: recurrent nets take examples shaped (L,), (C, L), (H, W) or (C, H, W); "
        f"the data has {tuple(input_shape)}"
    )


def _to_sequence(x: torch.Tensor, input_shape: tuple[int, ...]) -> torch.Tensor:
    """(B, *input_shape) -> (B, T, F), the layout of :func:`sequence_layout`."""
    if len(input_shape) == 1:
        return x.unsqueeze(-1)  # (B, L) -> (B, L, 1)
    if len(input_shape) == 2:
        steps, _ = sequence_layout(input_shape)
        return x if steps == input_shape[0] else x.transpose(1, 2)  # rows as is; (B, C, L) -> (B, L, C)
    return x.permute(0, 2, 1, 3).flatten(2)  # (B, C, H, W) -> (B, H, C, W) -> (B, H, C*W)


class RecurrentNet(nn.Module):
    """Recurrent layers and a linear head; see the module docstring.

    Example
    -------
    >>> net = RecurrentNet(ModelSpec(kind="lstm", hidden=[8, 8], bidirectional=True), (2, 30), 3)
    >>> net(torch.randn(4, 2, 30)).shape, [name for name, _ in net.rnn.named_children()]
    (torch.Size([4, 3]), ['0', '1'])
    """

    def __init__(self, spec: ModelSpec, input_shape: tuple[int, ...], output_dim: int):
        super().__init__()
        self.kind = spec.kind
        self.input_shape = tuple(input_shape)
        self.language_model = spec.embedding is not None
        directions = 2 if spec.bidirectional else 1
        if self.language_model:
            self.embed = nn.Embedding(output_dim, spec.embedding)  # token ids -> (B, T, E)
            width = spec.embedding
        else:
            _, width = sequence_layout(self.input_shape)
        options = {"nonlinearity": spec.activation} if spec.kind == "rnn" else {}
        layers = []
        for hidden in spec.hidden:
            layers.append(CELLS[spec.kind](width, hidden, batch_first=True, bidirectional=spec.bidirectional, **options))
            width = hidden * directions
        self.rnn = nn.ModuleList(layers)
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.head = nn.Linear(width, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.language_model:
            if torch.is_floating_point(x):
                raise BabysitError(
                    "model.embedding: a language model takes token ids (integers); the inputs are real "
                    "numbers, so leave model.embedding unset to read them as a sequence"
                )
            h = self.embed(x)  # (B, T) -> (B, T, E)
        else:
            if not torch.is_floating_point(x):
                raise BabysitError(
                    "model.embedding: the inputs are token ids (integers); set model.embedding (e.g. 64) "
                    "for a recurrent language model"
                )
            h = _to_sequence(x, self.input_shape)  # (B, *input_shape) -> (B, T, F)
        last = None
        for index, layer in enumerate(self.rnn):
            if index:
                h = self.dropout(h)
            h, last = layer(h)  # (B, T, F) -> (B, T, directions * H); last: (directions, B, H)
        if self.language_model:
            return self.head(self.dropout(h))  # (B, T, V): the next token's logits at every position
        if isinstance(last, tuple):
            last = last[0]  # lstm: (h_n, c_n) -> h_n
        final = last.transpose(0, 1).flatten(1)  # (directions, B, H) -> (B, directions * H)
        return self.head(self.dropout(final))  # (B, output_dim)


def _initialise_recurrent(net: RecurrentNet, init: str) -> None:
    """The lstm forget-gate bias at 1, and orthogonal recurrent matrices per gate when asked."""
    gates = GATES[net.kind]
    for layer in net.rnn:
        for name, param in layer.named_parameters():
            hidden = param.shape[0] // gates
            with torch.no_grad():
                if name.startswith("weight_hh") and init == "orthogonal":
                    for block in param.split(hidden):
                        nn.init.orthogonal_(block)
                if name.startswith("bias_ih") and net.kind == "lstm":
                    param[hidden:2 * hidden].fill_(1.0)  # forget gate (i, f, g, o); bias_hh stays as drawn
                    layer.get_parameter(name.replace("bias_ih", "bias_hh"))[hidden:2 * hidden].zero_()


def build_recurrent(spec: ModelSpec, input_shape: tuple[int, ...], output_dim: int) -> nn.Module:
    """A :class:`RecurrentNet` of ``spec.kind`` (its Linear head not yet initialised; see nets.build).

    Example
    -------
    >>> net = build_recurrent(ModelSpec(kind="lstm", hidden=[8]), (40,), 10)
    >>> net.rnn[0].bias_ih_l0[8:16].tolist() == [1.0] * 8  # forget-gate bias
    True
    """
    if not spec.hidden:
        raise BabysitError(f"model.hidden: a {spec.kind} needs at least one recurrent layer, e.g. [128]; got []")
    if spec.kind == "rnn" and spec.activation not in ("tanh", "relu"):
        raise BabysitError(f"model.activation: an rnn's cell is tanh or relu; got '{spec.activation}'")
    if spec.kind in ("gru", "lstm") and spec.activation != "tanh":
        raise BabysitError(
            f"model.activation: a {spec.kind}'s gates have fixed nonlinearities (sigmoid and tanh); "
            f"leave it unset or tanh, got '{spec.activation}'"
        )
    for key, given, allowed in (("norm", spec.norm, "none"), ("residual", spec.residual, False)):
        if given != allowed:
            raise BabysitError(
                f"model.{key}: does not apply to recurrent nets; use {str(allowed).lower()}, got {given!r}"
            )
    if spec.embedding is not None:
        if spec.bidirectional:
            raise BabysitError(
                "model.bidirectional: a language model must not read the sequence backwards (it would "
                "see the tokens it predicts); use false"
            )
        if len(input_shape) != 1:
            raise BabysitError(
                f"model.embedding: a language model takes sequences of token ids shaped (T,); the data "
                f"has {tuple(input_shape)}"
            )
    net = RecurrentNet(spec, input_shape, output_dim)
    _initialise_recurrent(net, spec.init)
    return net


__all__ = ["CELLS", "RecurrentNet", "build_recurrent", "sequence_layout"]
