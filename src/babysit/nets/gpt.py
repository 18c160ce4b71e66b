"""A small decoder-only transformer (``model.kind: gpt``) for character-level language modelling.

Follows GPT-2 (Radford et al. 2019) as nanoGPT (Karpathy) writes it, in small:

    ids (B, T) -> token embedding + learned position embedding -> dropout
               -> ``model.layers`` pre-norm blocks: x + attn(LN(x)), then x + mlp(LN(x))
               -> LayerNorm -> head (the token embedding, transposed) -> logits (B, T, V)

- Attention is causal self-attention through ``torch.nn.functional.scaled_dot_product_attention``
  with ``is_causal=True``: position t attends to positions <= t only, so one forward pass
  gives the next-token prediction at every position of a window (Vaswani et al. 2017).
- Pre-norm blocks (LayerNorm before each sub-layer, GPT-2's order) keep the residual path an
  identity, which trains stably without warm-up at this size (Xiong et al. 2020).
- ``model.qk_norm: true`` adds qk-layernorm: a LayerNorm over each head's query and key
  vectors before the dot product (Dehghani et al. 2023, "Scaling vision transformers to 22
  billion parameters", arXiv 2302.05442; Wortsman et al. 2023, "Small-scale proxies for
  large-scale Transformer training instabilities", arXiv 2309.14322). It bounds the attention
  logits, whose growth otherwise collapses attention to one key at high learning rates. Off by
  default: the default network is GPT-2's, parameter for parameter.
- The output head shares its weight with the token embedding (Press & Wolf 2017, "Using the
  output embedding to improve language models"): fewer parameters, and a token's input and
  output vectors learn from each other.
- Initialisation is GPT-2's, not ``model.init``: weights N(0, 0.02), biases 0, and the two
  projections that write into the residual stream scaled by 1/sqrt(2 * layers), so the
  stream's variance does not grow with depth. The logits then start small and the loss at
  initialisation is close to ln V (the preflight's check).

Sizes: ``model.embed`` (a multiple of ``model.heads``), ``model.heads``, ``model.layers``;
the context is the data's window length (``data.context``), read off the input shape;
``model.dropout`` on embeddings, attention and residual branches.

:func:`transformer_probe` runs one no-grad forward that writes the attention weights out
(the training forward's fused attention never forms them) and returns what
``checks.transformer`` watches: each head's attention entropy and largest logit, the
residual stream's RMS after each block, and the output logits' log Z.

Example
-------
>>> from babysit.config import ModelSpec
>>> net = build_gpt(ModelSpec(kind="gpt", layers=2, heads=2, embed=16), (8,), 30)
>>> net(torch.randint(0, 30, (3, 8))).shape
torch.Size([3, 8, 30])
>>> net.head.weight is net.token.weight
True
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from babysit.config import ModelSpec
from babysit.errors import BabysitError

INIT_STD = 0.02  # GPT-2


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each position sees itself and the positions before it.

    ``qk_norm``: LayerNorm over each head's queries and keys (one LayerNorm of the head size,
    shared by the heads) before the dot product (the module docstring's qk-layernorm).
    While :attr:`probe` is a dict, the forward computes the attention weights explicitly and
    stores each head's entropy and largest logit there (see :func:`transformer_probe`).
    """

    def __init__(self, embed: int, heads: int, dropout: float, qk_norm: bool = False):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(embed, 3 * embed)  # queries, keys and values of every head in one matmul
        self.proj = nn.Linear(embed, embed)  # writes into the residual stream
        self.resid_dropout = nn.Dropout(dropout)
        # None without qk_norm: the default network has GPT-2's parameters, no more
        self.q_norm = nn.LayerNorm(embed // heads) if qk_norm else None
        self.k_norm = nn.LayerNorm(embed // heads) if qk_norm else None
        self.probe: dict[str, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # (B, T, 3C) -> 3 x (B, T, C)
        # (B, T, C) -> (B, nh, T, hs): each head attends over the sequence on its own slice
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)  # over hs: |q.k| / sqrt(hs) is bounded by the gains
        if self.probe is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                               is_causal=True)  # (B, nh, T, hs)
        else:
            y = self._probed_attention(q, k, v, self.probe)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, nh, T, hs) -> (B, T, C): heads side by side
        return self.resid_dropout(self.proj(y))

    def _probed_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          probe: dict[str, torch.Tensor]) -> torch.Tensor:
        """What ``scaled_dot_product_attention(..., is_causal=True)`` computes, with the weights
        formed explicitly so that ``probe`` gets, per head (nh,): ``entropy``, the entropy in nats
        of the attention distribution averaged over the batch and the queries 1..T-1 (query 0
        sees one key: entropy 0 whatever the weights), and ``max_logit``, the largest |q.k|/sqrt(hs)
        over the keys each query sees."""
        T = q.shape[-2]
        logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, nh, T, hs) x (B, nh, hs, T) -> (B, nh, T, T)
        future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)  # key after query
        logits = logits.masked_fill(future, float("-inf"))
        weights = logits.softmax(-1)  # (B, nh, T, T), zero on the future
        # -sum p log p with 0 log 0 = 0 (the masked keys); (B, nh, T) -> (nh,) over batch and queries 1..T-1
        entropy = -torch.special.xlogy(weights, weights).sum(-1)
        probe["entropy"] = entropy[:, :, 1:].mean((0, 2)) if T > 1 else entropy.mean((0, 2))
        probe["max_logit"] = logits.masked_fill(future, 0.0).abs().amax((0, 2, 3))
        weights = F.dropout(weights, self.dropout, self.training)
        return weights @ v  # (B, nh, T, T) x (B, nh, T, hs) -> (B, nh, T, hs)


class FeedForward(nn.Module):
    """The position-wise MLP of a block: C -> 4C -> GELU -> C."""

    def __init__(self, embed: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(embed, 4 * embed)
        self.act = nn.GELU()
        self.proj = nn.Linear(4 * embed, embed)  # writes into the residual stream
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    """One pre-norm transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, embed: int, heads: int, dropout: float, qk_norm: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(embed)
        self.attn = CausalSelfAttention(embed, heads, dropout, qk_norm)
        self.norm2 = nn.LayerNorm(embed)
        self.mlp = FeedForward(embed, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """Token ids (B, T) -> next-token logits (B, T, vocab); see the module docstring."""

    initializes_itself = True  # nets.build leaves GPT-2's init alone (model.init does not apply)

    def __init__(self, vocab: int, context: int, embed: int, layers: int, heads: int, dropout: float = 0.0,
                 qk_norm: bool = False):
        super().__init__()
        self.context = context
        self.token = nn.Embedding(vocab, embed)
        self.position = nn.Embedding(context, embed)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(embed, heads, dropout, qk_norm) for _ in range(layers))
        self.norm = nn.LayerNorm(embed)
        self.head = nn.Linear(embed, vocab, bias=False)
        self.head.weight = self.token.weight  # weight tying: one (vocab, embed) matrix in and out
        self._init_weights(layers)

    def _init_weights(self, layers: int) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, INIT_STD)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, INIT_STD)
        # GPT-2: each block adds two branches to the residual stream; scaling their output
        # projections by 1/sqrt(2 * layers) keeps the stream's variance from growing with depth
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, 0.0, INIT_STD / math.sqrt(2 * layers))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        T = ids.shape[1]
        if T > self.context:
            raise ValueError(f"GPT: a window of {T} tokens is longer than the context {self.context}")
        positions = torch.arange(T, device=ids.device)
        x = self.dropout(self.token(ids) + self.position(positions))  # (B, T, C) + (T, C)
        for block in self.blocks:
            x = block(x)  # (B, T, C)
        return self.head(self.norm(x))  # (B, T, C) -> (B, T, vocab)


@torch.no_grad()
def transformer_probe(model: GPT, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """What :class:`GPT` does inside on the windows ``ids`` (B, T): one eval-mode, no-grad
    forward with the attention weights formed explicitly.

    Returns tensors on the model's device (no host sync): ``entropy`` (layers, heads), each
    head's attention entropy in nats averaged over the windows and the queries 1..T-1 (at most
    the mean of ln(t+1) over them, for uniform attention; 0 when each query attends to one
    key); ``max_logit`` (layers, heads), the largest |q.k|/sqrt(hs) a query gives a key it
    sees; ``rms`` (layers,), the residual stream's root mean square per token after each block,
    averaged over tokens; ``log_z`` (), the mean over positions of the output logits'
    logsumexp over the vocabulary (the softmax's log normaliser, what z-loss pulls to 0). The
    model's train/eval mode is restored after; the forward draws no random numbers.

    Example
    -------
    >>> net = GPT(vocab=5, context=4, embed=8, layers=2, heads=2)
    >>> stats = transformer_probe(net, torch.randint(0, 5, (3, 4)))
    >>> stats["entropy"].shape, stats["rms"].shape, stats["log_z"].shape
    (torch.Size([2, 2]), torch.Size([2]), torch.Size([]))
    >>> bool((stats["entropy"] <= math.log(4)).all())  # nats, at most ln T
    True
    """
    rms: list[torch.Tensor] = []

    def residual_rms(_block: nn.Module, _inputs: Any, out: torch.Tensor) -> None:
        rms.append(out.float().pow(2).mean(-1).sqrt().mean())  # (B, T, C) -> RMS per token -> mean

    attentions = [block.attn for block in model.blocks]
    handles = [block.register_forward_hook(residual_rms) for block in model.blocks]
    was_training = model.training
    model.eval()
    try:
        for attn in attentions:
            attn.probe = {}
        logits = model(ids)  # (B, T, V)
        probes = [attn.probe for attn in attentions]
    finally:
        for attn in attentions:
            attn.probe = None
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {"entropy": torch.stack([p["entropy"] for p in probes]).float(),
            "max_logit": torch.stack([p["max_logit"] for p in probes]).float(),
            "rms": torch.stack(rms),
            "log_z": logits.float().logsumexp(-1).mean()}


def build_gpt(spec: ModelSpec, input_shape: tuple[int, ...], output_dim: int) -> nn.Module:
    """A :class:`GPT` for windows of ``input_shape = (context,)`` token ids over a vocabulary of
    ``output_dim`` tokens.

    Example
    -------
    >>> net = build_gpt(ModelSpec(kind="gpt", layers=1, heads=1, embed=8), (4,), 5)
    >>> sum(p.numel() for p in net.parameters())  # 40 token + 32 position + 872 block + 16 norm; the head is tied
    960
    """
    if len(input_shape) != 1:
        raise BabysitError(f"model.kind: gpt reads windows of token ids (data.source: text), "
                           f"got examples of shape {input_shape}")
    if spec.embed % spec.heads:
        raise BabysitError(f"model.embed: must be a multiple of model.heads ({spec.heads}), got {spec.embed}")
    return GPT(output_dim, input_shape[0], spec.embed, spec.layers, spec.heads, spec.dropout, spec.qk_norm)


@torch.no_grad()
def generate(model: nn.Module, ids: torch.Tensor, new_tokens: int, context: int, *,
             temperature: float = 1.0, top_k: int | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Extend ``ids`` (B, t) by ``new_tokens`` tokens sampled from ``model``, one at a time.

    Works with any causal language model that maps ids (B, T) to logits (B, T, V): each step
    feeds the last ``context`` ids and samples from the softmax of the last position's logits
    divided by ``temperature`` (0: always the most likely token), among the ``top_k`` most
    likely tokens when given. ``generator`` seeds the draws. The model is put in eval mode
    for the call and back as it was after.

    Example
    -------
    >>> from babysit.config import ModelSpec
    >>> net = build_gpt(ModelSpec(kind="gpt", layers=1, heads=1, embed=8), (4,), 5)
    >>> out = generate(net, torch.tensor([[1, 2]]), 6, 4, generator=torch.Generator().manual_seed(0))
    >>> out.shape, out[0, :2].tolist()
    (torch.Size([1, 8]), [1, 2])
    """
    was_training = model.training
    model.eval()
    try:
        for _ in range(new_tokens):
            logits = model(ids[:, -context:])[:, -1, :].float()  # (B, V): the next token's
            if temperature <= 0:
                following = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None and top_k < logits.shape[-1]:
                    kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                following = torch.multinomial(probs.cpu(), 1, generator=generator).to(ids.device)  # (B, 1)
            ids = torch.cat([ids, following], dim=1)
    finally:
        model.train(was_training)
    return ids


__all__ = ["GPT", "Block", "CausalSelfAttention", "FeedForward", "build_gpt", "generate", "transformer_probe"]
