"""Built-in gpt model: a nanoGPT-style decoder (a KV cache for generation) or classifier."""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from pydantic import Field, model_validator
from torch import nn

from lmforge import hookimpl, ops
from lmforge.errors import LmforgeError
from lmforge.interfaces.export import ExportGraph, StateSpec, TensorSpec
from lmforge.interfaces.model import LanguageModel, Model, ModelSpec, SequenceClassifier
from lmforge.ops.attention import attention
from lmforge.plugins.models.classifier_parts import at_last_token, check_inputs, require_num_labels
from lmforge.plugins.models.graphs import classifier_graph, lm_graph
from lmforge.settings import Settings as ComponentSettings


def heads_divide_width(settings):
    """Settings validator of the attention models: the heads split the width evenly."""
    if settings.n_embd % settings.n_head:
        raise ValueError(f"n_embd must be divisible by n_head: found n_embd={settings.n_embd}, "
                         f"n_head={settings.n_head} (head size "
                         f"{settings.n_embd / settings.n_head:g})")
    return settings


class KVCache(NamedTuple):
    """What `GptModule.generate_step` carries between calls.

    `layers[i]` is layer i's (keys, values), each (B, n_head, pos, head_dim); `pos` is the
    number of tokens cached, which is also the position of the next token fed.
    """

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    pos: int


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection; causal (a decoder's) or not."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool, backend: str,
                 causal: bool = True):
        super().__init__()
        self.n_head = n_head
        self.causal = causal
        self.dropout = dropout
        self.backend = backend
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None,
                key_padding_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # each (B, T, C)
        # (B, T, C) -> (B, nh, T, hs): heads become a batch dimension
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if past is not None:
            k = torch.cat((past[0], k), dim=2)  # (B, nh, pos + T, hs)
            v = torch.cat((past[1], v), dim=2)
        # With a cache, Tq < Tk and the op lines the causal mask up with the last Tq keys.
        y = attention(q, k, v, causal=self.causal, key_padding_mask=key_padding_mask,
                      dropout_p=self.dropout if self.training else 0.0,
                      backend=self.backend)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y)), (k, v)


class MLP(nn.Module):
    """Position-wise feed-forward: C -> 4C -> GELU -> C."""

    def __init__(self, n_embd: int, dropout: float, bias: bool):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        # Exact (erf) GELU, as nanoGPT: it ran faster here than the tanh approximation
        # (2.0 against 2.8 ms forward+backward on a (2048, 512) input, 2 threads).
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """A pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool, backend: str,
                 causal: bool = True):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = SelfAttention(n_embd, n_head, dropout, bias, backend, causal)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, dropout, bias)

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None,
                key_padding_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        attended, present = self.attn(self.ln_1(x), past, key_padding_mask)
        x = x + attended
        x = x + self.mlp(self.ln_2(x))
        return x, present


def gpt_transformer(settings: Gpt.Settings, vocab_size: int, backend: str) -> nn.ModuleDict:
    """The decoder both gpt modules share: embeddings, causal blocks, final LayerNorm."""
    s = settings
    return nn.ModuleDict(dict(
        wte=nn.Embedding(vocab_size, s.n_embd),
        wpe=nn.Embedding(s.block_size, s.n_embd),
        drop=nn.Dropout(s.dropout),
        h=nn.ModuleList(Block(s.n_embd, s.n_head, s.dropout, s.bias, backend)
                        for _ in range(s.n_layer)),
        ln_f=nn.LayerNorm(s.n_embd, bias=s.bias),
    ))


def init_gpt2(module: nn.Module, n_layer: int) -> None:
    """GPT-2's initialization of `module`'s Linear and Embedding layers, in place."""
    module.apply(_init_weights)
    # GPT-2: scale the projections that write into the residual stream by 1/sqrt(2 n_layer),
    # two per block, so the stream's variance does not grow with depth.
    for name, p in module.named_parameters():
        if name.endswith("c_proj.weight"):
            nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


def decode(transformer: nn.ModuleDict, idx: torch.Tensor, pos: int, past: list | None
           ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Final hidden states (B, T, C) of `idx` at positions pos.., and each layer's (k, v)."""
    T = idx.shape[1]
    positions = torch.arange(pos, pos + T, dtype=torch.long, device=idx.device)  # (T,)
    tok_emb = transformer.wte(idx)  # (B, T, C)
    pos_emb = transformer.wpe(positions)  # (T, C), broadcast over the batch
    x = transformer.drop(tok_emb + pos_emb)
    presents = []
    for i, block in enumerate(transformer.h):
        x, present = block(x, None if past is None else past[i])
        presents.append(present)
    return transformer.ln_f(x), presents


class GptDecodeStep(nn.Module):
    """`GptModule.generate_step` as an export graph: the cache and positions are explicit.

    Inputs: `input_ids` and `position_ids` (B, step), `attention_mask` (B, past + step), True
    for each key that may be attended (cached entries in use and the new tokens), then each
    layer's cached keys and values (B, n_head, past, head_dim). Outputs: the logits of the last
    position (B, V), then each layer's keys and values of the new tokens only (B, n_head, step,
    head_dim), for the caller to append to its cache. The new tokens attend causally among
    themselves; rows may sit at different positions.
    """

    def __init__(self, model: GptModule):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                attention_mask: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        transformer = self.model.transformer
        x = transformer.drop(transformer.wte(input_ids) + transformer.wpe(position_ids))
        step = input_ids.shape[1]
        cached = attention_mask.shape[1] - step
        past_allowed = attention_mask[:, None, None, :cached]  # (B, 1, 1, past)
        causal = torch.ones(step, step, dtype=torch.bool, device=x.device).tril()
        new_allowed = attention_mask[:, None, None, cached:] & causal  # (B, 1, step, step)
        presents = []
        for i, block in enumerate(transformer.h):
            attended, keys, values = attend_over_cache(
                block.attn, block.ln_1(x), past[2 * i], past[2 * i + 1], past_allowed,
                new_allowed)
            x = x + attended
            x = x + block.mlp(block.ln_2(x))
            presents += [keys, values]
        return self.model.lm_head(transformer.ln_f(x[:, -1])), *presents


def attend_over_cache(attn: SelfAttention, x: torch.Tensor, past_keys: torch.Tensor,
                      past_values: torch.Tensor, past_allowed: torch.Tensor,
                      new_allowed: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`attn` on `x` (B, T, C) over a KV cache, written for export: the scores against the
    cache and against the new tokens are computed apart and softmaxed together, so the cache is
    never concatenated nor its keys transposed. In onnxruntime those two copies of the cache were
    over half of a decode step (1.59 against 0.73 ms at batch 8 with 140 cached positions).
    Returns the attention's output (B, T, C) and the new tokens' keys and values (B, nh, T, hs).
    """
    B, T, C = x.shape
    head_size = C // attn.n_head
    q, k, v = (t.view(B, T, attn.n_head, head_size).transpose(1, 2)
               for t in attn.c_attn(x).split(C, dim=2))
    q = q * (1.0 / math.sqrt(head_size))
    to_cache = (q @ past_keys.transpose(-2, -1)).masked_fill(~past_allowed, float("-inf"))
    to_new = (q @ k.transpose(-2, -1)).masked_fill(~new_allowed, float("-inf"))
    weights = torch.softmax(torch.cat((to_cache, to_new), dim=-1), dim=-1)
    cached = past_keys.shape[2]
    y = weights[..., :cached] @ past_values + weights[..., cached:] @ v  # (B, nh, T, hs)
    y = y.transpose(1, 2).reshape(B, T, C)
    return attn.resid_dropout(attn.c_proj(y)), k, v


class GptModule(LanguageModel):
    """The GPT network: token + learned position embeddings, n_layer blocks, LayerNorm, lm head."""

    def __init__(self, settings: Gpt.Settings, vocab_size: int, backend: str):
        super().__init__()
        self.settings = settings
        self.vocab_size = vocab_size
        self.max_context = settings.block_size
        self.kernels_backend = backend  # resolved once, at build time
        s = settings
        self.transformer = gpt_transformer(s, vocab_size, backend)
        self.lm_head = nn.Linear(s.n_embd, vocab_size, bias=False)
        if s.tie_embeddings:
            # One tensor serves as input embedding and output projection (Press & Wolf 2017).
            self.lm_head.weight = self.transformer.wte.weight
        init_gpt2(self, s.n_layer)

    def _check_length(self, idx: torch.Tensor, pos: int, where: str) -> None:
        if idx.dim() != 2 or idx.shape[1] == 0:
            raise ValueError(f"gpt {where}: expected token ids of shape (batch, time) with "
                             f"time >= 1, found shape {tuple(idx.shape)}")
        if pos + idx.shape[1] > self.max_context:
            raise ValueError(f"gpt {where}: at most block_size={self.max_context} positions, "
                             f"found {pos} cached + {idx.shape[1]} new = {pos + idx.shape[1]}; "
                             f"crop the sequence to its last {self.max_context} tokens "
                             f"(lmforge.plugins.tasks.generate does this)")

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, V) of every position of `idx` (B, T), T <= block_size."""
        self._check_length(idx, 0, "forward")
        x, _ = decode(self.transformer, idx, 0, None)
        return self.lm_head(x)

    def generate_step(self, idx: torch.Tensor, state: KVCache | None
                      ) -> tuple[torch.Tensor, KVCache]:
        """Logits (B, V) after `idx` (B, t) on top of the cache `state` (None: a fresh prompt)."""
        pos = 0 if state is None else state.pos
        self._check_length(idx, pos, "generate_step")
        x, presents = decode(self.transformer, idx, pos, None if state is None else state.layers)
        logits = self.lm_head(x[:, -1, :])  # (B, V): only the last position is needed
        return logits, KVCache(presents, pos + idx.shape[1])

    def export_graphs(self) -> list[ExportGraph]:
        """"model", and "decode" (`GptDecodeStep`) with its KV cache as state."""
        s = self.settings
        head_dim = s.n_embd // s.n_head

        def cache(prefix: str, length: str) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(f"{prefix}_{kind}_{i}", "float32",
                                    ("batch", s.n_head, length, head_dim))
                         for i in range(s.n_layer) for kind in ("key", "value"))

        past, present = cache("past", "past"), cache("present", "step")
        step_ids = ("batch", "step")
        decode = ExportGraph(
            "decode", GptDecodeStep(self),
            inputs=(TensorSpec("input_ids", "int64", step_ids),
                    TensorSpec("position_ids", "int64", step_ids),
                    TensorSpec("attention_mask", "bool", ("batch", "past+step")), *past),
            outputs=(TensorSpec("logits", "float32", ("batch", self.vocab_size)), *present),
            state=StateSpec("kv_cache", tuple(t.name for t in past),
                            tuple(t.name for t in present), batch_axis=0, sequence_axis=2),
            max_sizes={"step": s.block_size, "past": s.block_size - 1})
        return [lm_graph(self, self.vocab_size, s.block_size), decode]

    def flops_per_token(self) -> int:
        """Forward FLOPs per token at full context: 2*N + 2*V*C + 2*n_layer*block_size*C.

        N counts the non-embedding parameters (blocks and final LayerNorm): each weight does one
        multiply-add (2 FLOPs) per token. 2*V*C is the lm head's matmul, counted even when tied
        to the embedding: with a BPE vocabulary it is often the largest matmul of a small model.
        Attention scores (q @ k^T) and the weighted sum (att @ v) each cost 2*t*C per token at
        context t; causal masking makes t average block_size/2, hence 2*n_layer*block_size*C.
        Softmax, GELU and LayerNorm arithmetic is left out, as in Kaplan et al. (2020).
        """
        s = self.settings
        embedding = {id(self.transformer.wte.weight), id(self.transformer.wpe.weight),
                     id(self.lm_head.weight)}
        non_embedding = sum(p.numel() for p in self.parameters() if id(p) not in embedding)
        return (2 * non_embedding + 2 * self.vocab_size * s.n_embd
                + 2 * s.n_layer * s.block_size * s.n_embd)


class GptClassifier(SequenceClassifier):
    """The gpt decoder read at each sequence's last real token, then a linear layer."""

    def __init__(self, settings: Gpt.Settings, vocab_size: int, num_labels: int, backend: str):
        super().__init__()
        self.settings = settings
        self.kernels_backend = backend
        self.transformer = gpt_transformer(settings, vocab_size, backend)
        self.head = nn.Linear(settings.n_embd, num_labels)
        init_gpt2(self, settings.n_layer)

    def forward(self, idx: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_labels) of `idx` (B, T), T <= block_size, padding on the right.

        Attention is causal, so the padding after a row's last real token cannot reach that
        token's state, and no mask is needed inside the blocks.
        """
        check_inputs(idx, pad_mask, "gpt")
        block_size = self.settings.block_size
        if idx.shape[1] > block_size:
            raise ValueError(f"gpt: at most block_size={block_size} tokens, found "
                             f"{idx.shape[1]}; the classify task truncates to context_length()")
        x, _ = decode(self.transformer, idx, 0, None)  # (B, T, C)
        return self.head(at_last_token(x, pad_mask))  # (B, num_labels)

    def export_graphs(self) -> list[ExportGraph]:
        return [classifier_graph(self, self.head.out_features, self.settings.block_size)]

    def flops_per_token(self) -> int:
        """The language model's count without its lm head: 2*N + 2*n_layer*block_size*C.

        The classification head runs once per sequence and is left out.
        """
        s = self.settings
        blocks = sum(p.numel() for p in self.transformer.h.parameters())
        blocks += sum(p.numel() for p in self.transformer.ln_f.parameters())
        return 2 * blocks + 2 * s.n_layer * s.block_size * s.n_embd


class Gpt(Model):
    """A GPT-2 style decoder-only transformer (nanoGPT), for the `lm` and `classify` tasks.

    Pre-LayerNorm blocks of causal self-attention and a 4x GELU MLP, learned position
    embeddings, and an lm head tied to the token embedding by default. Sequences are at most
    `block_size` tokens; generation uses a KV cache and recomputes from the last tokens when
    it runs past `block_size`. Attention runs on the `kernels` backend (see `lmforge doctor`).
    For `classify`, a linear layer reads the hidden state of each sequence's last real token.
    """

    class Settings(ComponentSettings):
        n_layer: int = Field(4, ge=1, le=256, description="transformer blocks")
        n_head: int = Field(4, ge=1, le=256, description="attention heads per block")
        n_embd: int = Field(128, ge=1, le=65536,
                            description="width of the residual stream; divisible by n_head")
        block_size: int = Field(128, ge=1, le=1_000_000,
                                description="longest sequence (positions learned), in tokens")
        dropout: float = Field(0.0, ge=0.0, lt=1.0,
                               description="on embeddings, attention weights and residual "
                                           "branches; 0 suits small data seen few times")
        bias: bool = Field(True, description="biases in Linear and LayerNorm layers (GPT-2 "
                                             "has them; without is slightly faster)")
        tie_embeddings: bool = Field(True, description="the lm head reuses the token embedding")
        kernels: Literal["auto", "fused", "reference"] = Field(
            "auto", description="attention backend: fused kernels when built (auto), or "
                                "always the PyTorch reference")

        _heads_divide_width = model_validator(mode="after")(heads_divide_width)

    tasks = ("lm", "classify")

    def context_length(self) -> int:
        return self.settings.block_size

    def build(self, spec: ModelSpec) -> GptModule | GptClassifier:
        if spec.task not in self.tasks:
            raise LmforgeError(f"gpt supports the tasks {', '.join(self.tasks)}; found task "
                               f"{spec.task!r}")
        backend = ops.resolve_backend(self.settings.kernels, "attention")
        if spec.task == "classify":
            num_labels = require_num_labels(spec, "gpt")
            return GptClassifier(self.settings, spec.vocab_size, num_labels, backend)
        return GptModule(self.settings, spec.vocab_size, backend)


@hookimpl
def register_models(register):
    register("gpt", Gpt)
