"""Generation speed of the demo-sized GPT: lmforge's torch path with its KV cache, the exported
bundle through onnxruntime (fp32 and int8), and Hugging Face transformers' GPT-2 of the same
dimensions (random weights, `generate` with its cache), interleaved, in tokens per second."""

from __future__ import annotations

import statistics
import textwrap
import time
from collections.abc import Callable

import pytest
import torch
from conftest import EXAMPLE_DATA

NEW_TOKENS = 256
PROMPT_TOKENS = 16
ROUNDS = 5
BATCHES = (1, 8)
# The demo's dimensions, with room for the prompt and 256 new tokens in the context so that no
# path recomputes a window (transformers' GPT-2 cannot).
DIMS = dict(n_layer=4, n_head=4, n_embd=128, block_size=512, vocab_size=2048)

transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A run of the demo's shape (trained one step: the weights do not change the speed) and its
    bundle with int8 graphs."""
    from lmforge.host.manager import load_plugins
    from lmforge.run.pipeline import load_run, run

    austen = EXAMPLE_DATA / "austen_6_novels.txt.gz"
    root = tmp_path_factory.mktemp("generate")
    config = root / "bench.yaml"
    config.write_text(textwrap.dedent(f"""\
        name: bench-generate
        runs_dir: "{root / "runs"}"
        data: {{source: {{type: text, paths: ["{austen}"]}}}}
        tokenizer: {{type: byte-bpe, vocab_size: {DIMS['vocab_size']}}}
        model: {{type: gpt, n_layer: {DIMS['n_layer']}, n_head: {DIMS['n_head']},
                 n_embd: {DIMS['n_embd']}, block_size: {DIMS['block_size']}, dropout: 0.0}}
        task: {{type: lm}}
        trainer: {{type: standard, max_steps: 1, warmup_steps: 0, batch_size: 2, eval_every: 1,
                   eval_batches: 1}}
        export: {{type: onnx, quantize: int8}}
        callbacks: []
        """), encoding="utf-8")
    registry = load_plugins().registry
    run(str(config), registry)
    run_dir = root / "runs" / "bench-generate"
    return load_run(run_dir, registry, with_data=False), run_dir / "export"


def torch_path(model: torch.nn.Module, prompts: torch.Tensor) -> Callable[[], int]:
    """lmforge's own decoding: generate_step with the KV cache, greedy, the whole batch."""

    @torch.no_grad()
    def decode() -> int:
        logits, state = model.generate_step(prompts, None)
        for _ in range(NEW_TOKENS - 1):
            logits, state = model.generate_step(logits.argmax(-1, keepdim=True), state)
        return prompts.shape[0] * NEW_TOKENS

    return decode


def onnx_path(bundle_dir, prompts: torch.Tensor, quantized: bool) -> Callable[[], int]:
    """The bundle's decode graph through the runtime's engine: the batch's requests decode
    together (continuous batching), greedy, eos not stopping them."""
    from lmforge.plugins.runtime.bundle import load_bundle
    from lmforge.plugins.runtime.generate import Engine, Sampling

    bundle = load_bundle(bundle_dir, quantized=quantized, threads=torch.get_num_threads())
    engine = Engine.for_bundle(bundle, max_batch=prompts.shape[0])
    sampling = Sampling(max_new_tokens=NEW_TOKENS, temperature=0.0)

    def decode() -> int:
        requests = [engine.submit(row.tolist(), sampling, stop_ids=()) for row in prompts]
        return sum(len(list(request.tokens())) for request in requests)

    return decode


def transformers_path(prompts: torch.Tensor) -> Callable[[], int]:
    config = transformers.GPT2Config(
        vocab_size=DIMS["vocab_size"], n_positions=DIMS["block_size"], n_embd=DIMS["n_embd"],
        n_layer=DIMS["n_layer"], n_head=DIMS["n_head"], resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()

    @torch.no_grad()
    def decode() -> int:
        out = model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                             max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                             use_cache=True)
        return (out.shape[1] - prompts.shape[1]) * prompts.shape[0]

    return decode


@pytest.mark.parametrize("batch", BATCHES)
def test_generation_tokens_per_second(exported, batch):
    loaded, bundle_dir = exported
    model = loaded.model.eval()
    prompts = torch.randint(0, DIMS["vocab_size"], (batch, PROMPT_TOKENS),
                            generator=torch.Generator().manual_seed(batch))
    variants = {
        "lmforge torch": torch_path(model, prompts),
        "onnxruntime fp32": onnx_path(bundle_dir, prompts, quantized=False),
        "onnxruntime int8": onnx_path(bundle_dir, prompts, quantized=True),
        "transformers": transformers_path(prompts),
    }
    for decode in variants.values():  # warm-up: first-call allocations and lazy imports
        decode()
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(ROUNDS):  # interleaved, so a slow spell of the machine hits every variant
        for name, decode in variants.items():
            start = time.perf_counter()
            tokens = decode()
            rates[name].append(tokens / (time.perf_counter() - start))
        # every variant made all its tokens: none stopped early
        assert tokens == batch * NEW_TOKENS
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(f"\nbatch {batch}, {PROMPT_TOKENS} prompt + {NEW_TOKENS} new tokens, "
          f"{torch.get_num_threads()} threads, median of {ROUNDS}:")
    for name, rate in medians.items():
        print(f"  {name:18s} {rate:9.0f} tokens/s   "
              f"x{rate / medians['transformers']:.2f} transformers   "
              f"x{rate / medians['lmforge torch']:.2f} lmforge torch")
