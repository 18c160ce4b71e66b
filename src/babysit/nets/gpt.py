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

import torch
import torch.nn.functional as F
from torch import nn

from babysit.config import ModelSpec
from babysit.errors import BabysitError

INIT_STD = 0.02  # GPT-2


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each position sees itself and the positions before it."""

    def __init__(self, embed: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(embed, 3 * embed)  # queries, keys and values of every head in one matmul
        self.proj = nn.Linear(embed, embed)  # writes into the residual stream
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # (B, T, 3C) -> 3 x (B, T, C)
        # (B, T, C) -> (B, nh, T, hs): each head attends over the sequence on its own slice
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, nh, T, hs) -> (B, T, C): heads side by side
        return self.resid_dropout(self.proj(y))


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

    def __init__(self, embed: int, heads: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(embed)
        self.attn = CausalSelfAttention(embed, heads, dropout)
        self.norm2 = nn.LayerNorm(embed)
        self.mlp = FeedForward(embed, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """Token ids (B, T) -> next-token logits (B, T, vocab); see the module docstring."""

    initializes_itself = True  # nets.build leaves GPT-2's init alone (model.init does not apply)

    def __init__(self, vocab: int, context: int, embed: int, layers: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.context = context
        self.token = nn.Embedding(vocab, embed)
        self.position = nn.Embedding(context, embed)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(embed, heads, dropout) for _ in range(layers))
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
    return GPT(output_dim, input_shape[0], spec.embed, spec.layers, spec.heads, spec.dropout)


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


__all__ = ["GPT", "Block", "CausalSelfAttention", "FeedForward", "build_gpt", "generate"]
