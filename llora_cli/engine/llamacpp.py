"""The llama.cpp engine: a GGUF compressed base run by llama.cpp (through llama-cpp-python, the optional extra
``llora[llamacpp]``), each deployed modifier loaded once as a llama.cpp LoRA adapter and chosen per request.

- One ``llama_cpp.Llama`` (model + one context) per base. Each modifier's LoRA GGUF (gguflora.py; converted at
  deploy, a derived file of the modifier) is loaded once with ``llama_adapter_lora_init``; a request selects
  it with ``llama_set_adapters_lora`` (no adapters for the base alone): no reload to switch.
- The KV cache holds the last request's tokens: a request on the same adapter reuses the common prompt
  prefix (llama-cpp-python's prefix match); a request on another adapter starts from an empty cache.
- Requests run one at a time (llama.cpp cannot mix adapters in one batch) on the engine's one thread
  (batching.Batcher with ``max_batch=1``): queued, never interleaved on the context.
- Prompts are encoded by the transformers engine's tokenizer (chat template included), read from the files
  written beside the GGUF at deploy without importing transformers (tokenizer.py), and passed to llama.cpp as
  token ids; replies are decoded by it too: both engines see identical tokens.
- Sampling: greedy at temperature 0; else temperature and top-p (llama.cpp's top-k and min-p turned off, so
  the settings mean what they mean on the transformers engine), seeded when asked.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from llora_cli.engine.base import Deployment, Engine
from llora_store import rules
from llora_store.errors import BadInput

if TYPE_CHECKING:  # annotations only (fastrun.py runs this engine without the ORM)
    from llora_store import Store
    from llora_store.models import Artifact


class LlamaCppEngine(Engine):
    engine = "llamacpp"

    def __init__(self, store: Store, deployment: Deployment, *, n_ctx: int = 4096,
                 threads: int | None = None) -> None:
        import threading

        import llama_cpp

        from llora_cli import modelfiles, tokenizer
        from llora_cli.engine.batching import Batcher

        super().__init__(store, deployment)
        base_dir = store.path_of(deployment.base.id)
        loaded: dict = {}

        def load() -> None:
            try:
                from llora_cli import prefetch

                loaded["llm"] = prefetch.take(base_dir / modelfiles.GGUF_NAME, n_ctx=n_ctx, threads=threads)
                if loaded["llm"] is not None:
                    loaded["prefetched"] = True
                    return  # loaded by the start-up prefetch of `llora run` (the same file and parameters)
                loaded["llm"] = llama_cpp.Llama(model_path=str(base_dir / modelfiles.GGUF_NAME), n_ctx=n_ctx,
                                                n_threads=threads or os.cpu_count() or 1, n_batch=512, verbose=False,
                                                logits_all=False)
            except BaseException as e:  # re-raised on the caller's thread
                loaded["error"] = e

        # llama.cpp loads the model (in C, without the GIL) while the tokenizer is read: start-up is the longer
        # of the two, not their sum
        loader = threading.Thread(target=load, name="llora-llamacpp-load", daemon=True)
        loader.start()
        try:
            # the tokenizer files written at deploy (or now, for an older deployment): no transformers, no torch
            self.tokenizer = tokenizer.ChatTokenizer(tokenizer.ensure(store, deployment.base))
        finally:
            loader.join()
        if "error" in loaded:
            raise loaded["error"]
        self.llm = loaded["llm"]
        self.n_ctx = n_ctx
        self.handles: dict[str, object] = {}
        self.current: str | None = None  # adapter set on the context
        self.load_info = {"strategy": "llamacpp-gguf", "threads": self.llm.n_threads, "n_ctx": n_ctx,
                          "prefetched": bool(loaded.get("prefetched"))}
        eos = self.tokenizer.eos_token_id
        self.eos = {eos, self.llm.token_eos()} - {None}
        self.batcher = Batcher(self, max_batch=1)
        for m in deployment.modifiers:
            self._attach(m)

    # -- adapters -----------------------------------------------------------------------------------------------
    def _attach(self, modifier: Artifact) -> None:
        import llama_cpp

        from llora_cli import gguflora

        rules.check_modifier_base(modifier, self.deployment.base)  # R6
        try:
            path = gguflora.ensure(self.store, modifier, self.deployment.base)
        except BadInput as e:
            self.refused[modifier.id] = str(e)
            return
        handle = llama_cpp.llama_adapter_lora_init(self.llm.model, str(path).encode())
        if not handle:
            self.refused[modifier.id] = f"llama.cpp could not load {path} (see its log with LLAMA_LOG)"
            return
        self.handles[modifier.id] = handle
        self.adapters[modifier.id] = modifier

    def _detach(self, modifier_id: str) -> None:
        import llama_cpp

        if self.current == modifier_id:
            self._select(None)
        handle = self.handles.pop(modifier_id, None)
        if handle:
            llama_cpp.llama_adapter_lora_free(handle)

    def _select(self, adapter: str | None) -> None:
        """Put ``adapter`` (None: none) on the context; the cache was computed with the other one: drop it."""
        import ctypes

        import llama_cpp

        if adapter == self.current:
            return
        ctx = self.llm.ctx
        if adapter is None:
            rc = llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
        else:
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self.handles[adapter])
            scales = (ctypes.c_float * 1)(1.0)
            rc = llama_cpp.llama_set_adapters_lora(ctx, handles, 1, scales)
        if rc != 0:
            raise RuntimeError(f"llama_set_adapters_lora failed ({rc})")
        self.llm.reset()
        self.current = adapter

    # -- batches of one -----------------------------------------------------------------------------------------
    def can_mix(self, adapters: set) -> bool:
        return len(adapters) <= 1

    def run(self, jobs) -> None:
        import llama_cpp
        import numpy as np

        from llora_cli.engine.batching import RowStreamer

        (job,) = jobs
        if len(job.input_ids) + job.max_tokens > self.n_ctx:
            raise BadInput(f"prompt ({len(job.input_ids)} tokens) + max_tokens ({job.max_tokens}) is over this "
                           f"engine's context of {self.n_ctx} tokens")
        self._select(job.adapter)
        self.llm.set_seed(job.seed if job.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED)
        streamer = RowStreamer(self.tokenizer, [job], self.eos)
        streamer.put(np.asarray(job.input_ids))
        processors = None
        if job.calculator:
            from llama_cpp import LogitsProcessorList

            from llora_cli.calculator import CalculatorLogitsProcessor

            streamer.calculator = CalculatorLogitsProcessor(self.tokenizer)
            processors = LogitsProcessorList([streamer.calculator])
        for token in self.llm.generate(job.input_ids, temp=job.temperature, top_p=job.top_p, top_k=0, min_p=0.0,
                                       repeat_penalty=1.0, logits_processor=processors):
            if streamer.wants_logprobs:  # the context still holds the logits this token was sampled from
                streamer.step_logprobs = self._logprobs()[None, :]
            streamer.put(np.asarray([token]))
            if job.done.is_set():
                break
        streamer.end()

    def _logprobs(self):
        """Log-softmax of the context's last logits (the model's distribution, before temperature and top-p)."""
        import llama_cpp
        import numpy as np

        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        logits = np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),)).astype(np.float64)
        top = logits.max()
        return logits - top - np.log(np.exp(logits - top).sum())

    def next_token_logits(self, ids: list[int], adapter: str | None):
        """Logits for the token after ``ids`` with ``adapter`` (parity tests and benchmarks); model thread only."""
        import llama_cpp
        import numpy as np

        self._select(adapter)
        self.llm.reset()
        self.llm.eval(ids)
        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),)).copy()
