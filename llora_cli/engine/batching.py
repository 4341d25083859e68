"""Batching of concurrent requests on one loaded model, modifiers mixed per row in one forward pass.

One thread does all the model's work (the *driver*: ``Batcher.drive`` in ``llora serve``, else the thread
waiting for a job). Measured here: torch's OpenMP pool throttles its spinning once a second thread has run
parallel regions (more OpenMP threads than cores), and a batch of 8 ran 1.8x slower on a second thread than on
the thread that loaded the model. Attaching and detaching adapters also run on that thread (``Batcher.call``).

Requests (``Job``) queue up while a batch runs; then the driver takes the oldest waiting job and every waiting
job that can share a forward pass with it (up to ``max_batch``), left-pads their prompts and runs one
``generate``. Each row gets its own modifier through ``RowLora``: PEFT's adapters are switched off and a forward
hook on every LoRA layer adds ``((x @ A_cat^T) * row_mask) @ B_cat^T``, with the batch's adapters' A and B
matrices concatenated and a per-row mask holding each adapter's scaling on its own columns (zero for the base
alone). Two matrix products per layer whatever the mix, where PEFT's ``adapter_names`` path gathers and
scatters rows once per adapter per layer, and no ``set_adapter`` walk over the model between requests
(figures in docs/benchmarks.md). Adapters this cannot express (DoRA, LoRA on embeddings, LoRA biases,
fan-in-fan-out layers) run through PEFT's ``set_adapter``, one modifier per batch.

Rows stop on their own EOS, their own stop strings or their own ``max_tokens`` (a per-row stopping criterion)
and stream their own text (``RowStreamer``, shared with the llama.cpp engine: stop strings, held-back text and
log-probabilities mean the same on both); a finished row's caller returns while the rest of the batch goes on.
Static batches, not continuous: a job that arrives while a batch runs waits for that batch to end
(docs/runtime.md). What can share a batch: the
same sampling settings (greedy, or the same temperature and top-p) and no seed (a seeded request runs alone, so
that its seed reproduces it).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Job:
    input_ids: list[int]
    adapter: str | None  # adapter name (the modifier's id) or None for the base alone
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    on_text: Callable[[str], None] | None = None
    control: Callable[[], object] | None = None  # a call to run on the model's thread instead of a request
    stop: tuple[str, ...] = ()  # the row ends before the first of these in its text
    logprobs: int | None = None  # None: none; k: each token's log-probability and the k most likely tokens
    # streamed text with the log-probabilities of the tokens it completes (instead of on_text when set)
    on_piece: Callable[[str, list[tuple]], None] | None = None
    modifier: object = None  # the caller's view of the request (the engine's Reply is built from it)
    params: dict = field(default_factory=dict)
    layers: tuple[int, ...] = ()  # decoder layers replaced by their layer adapters (dynamic depth; () = full depth)
    calculator: bool = False  # arithmetic steps' results computed (llora_cli.calculator), not generated
    calculator_forced: int = 0  # filled in: how many tokens the calculator changed (the model's argmax was another)
    # filled in by the model's thread
    result: object = None
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None  # "stop" (EOS or a stop string) or "length" (max_tokens or the model's end)
    token_logprobs: list[tuple] = field(default_factory=list)  # per token: (id, logprob, [(id, logprob), ...])
    ends: list[int] = field(default_factory=list)  # decoded text length after each (non-EOS) token
    text_tokens: int = 0  # how many generated tokens the text comes from (those with logprobs in the reply)
    submitted: float = 0.0
    first_token: float | None = None
    finished: float | None = None
    batch_size: int = 0
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def key(self) -> tuple:
        """Jobs of equal keys can share a forward pass: same sampling settings and the same layer set."""
        if self.seed is not None:
            return ("seeded", id(self))
        if self.temperature <= 0:
            return ("greedy", self.layers)
        return ("sample", self.temperature, self.top_p, self.layers)


class RowStreamer:
    """A streamer for a batch: every generated step gives one token per row; each row's text is decoded
    incrementally and handed to its job's ``on_text`` / ``on_piece``. Text is held back at an unfinished word or
    UTF-8 sequence (like transformers' TextStreamer) and while it ends with a proper prefix of one of the row's
    stop strings; a row ends at EOS, at ``max_tokens`` or as soon as its text contains a stop string (the text is
    cut before it). So the streamed pieces of a row always join to its final ``Job.text``.

    Log-probabilities: the engine sets ``step_logprobs`` (a [rows, vocab] array of log-softmaxed logits) before
    each ``put``; rows that asked for them record the chosen token's and the top k."""

    def __init__(self, tokenizer, jobs: list[Job], eos: set[int]) -> None:
        self.tok = tokenizer
        self.jobs = jobs
        self.eos = eos
        self.prompt_seen = False
        self.printed = [0] * len(jobs)
        self.sent = [0] * len(jobs)  # tokens whose log-probabilities were streamed
        self.open = [True] * len(jobs)
        self.step_logprobs = None
        self.wants_logprobs = any(j.logprobs is not None for j in jobs)
        self.calculator = None  # the CalculatorLogitsProcessor of this generation: each row's count read at its close

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate hands over the prompt first
            self.prompt_seen = True
            return
        now = time.perf_counter()
        step, self.step_logprobs = self.step_logprobs, None
        for i, token in enumerate(value.reshape(-1).tolist()):
            if not self.open[i]:
                continue
            job = self.jobs[i]
            if job.first_token is None:
                job.first_token = now
            job.tokens.append(token)
            if job.logprobs is not None:
                if step is None:
                    raise RuntimeError("log-probabilities were asked for but the engine gave none")
                job.token_logprobs.append(top_logprobs(step[i], token, job.logprobs))
            if token in self.eos:
                self._close(i, now, "stop", self._text(job))
                continue
            text = self._text(job)
            job.ends.append(len(text))
            cut = stop_at(text, job.stop)
            if cut is not None:
                self._close(i, now, "stop", text[:cut], cut=True)
                continue
            self._emit(i, text, final=False)
            if len(job.tokens) >= job.max_tokens:
                self._close(i, now, "length", text)

    def end(self) -> None:
        """Generation is over: rows still open ran out of room (their ``max_tokens`` or the model's)."""
        now = time.perf_counter()
        for i in range(len(self.jobs)):
            if self.open[i]:
                self._close(i, now, "length", self._text(self.jobs[i]))

    def _text(self, job: Job) -> str:
        ids = job.tokens[:-1] if job.tokens and job.tokens[-1] in self.eos else job.tokens
        return self.tok.decode(ids, skip_special_tokens=True)

    def _emit(self, i: int, text: str, final: bool) -> None:
        job = self.jobs[i]
        if final:
            upto, covered = len(text), job.text_tokens
        else:
            if text.endswith("\ufffd"):
                return
            upto = len(text) if text.endswith("\n") else text.rfind(" ") + 1
            upto = max(self.printed[i], min(upto, len(text) - held_back(text, job.stop)))
            covered = self.sent[i]  # tokens wholly inside the text sent so far (and starting before its end)
            while covered < len(job.ends) and job.ends[covered] <= upto and (
                    job.ends[covered - 1] if covered else 0) < upto:
                covered += 1
        piece = text[self.printed[i]:upto]
        entries = job.token_logprobs[self.sent[i]:covered] if job.logprobs is not None else []
        self.printed[i] = max(self.printed[i], upto)
        self.sent[i] = max(self.sent[i], covered)
        if job.on_piece is not None:
            if piece or entries:
                job.on_piece(piece, entries)
        elif piece and job.on_text is not None:
            job.on_text(piece)

    def _close(self, i: int, now: float, reason: str, text: str, cut: bool = False) -> None:
        self.open[i] = False
        job = self.jobs[i]
        job.text = text
        job.finish_reason = reason
        if cut:  # cut before a stop string: the tokens that start before the cut (a token starts where the
            n = 0  # text of the tokens before it ended)
            while n < len(job.ends) and (job.ends[n - 1] if n else 0) < len(text):
                n += 1
            job.text_tokens = n
        else:
            job.text_tokens = len(job.ends)  # every token but EOS
        self._emit(i, text, final=True)
        if self.calculator is not None:  # the row's tokens so far (a closed row's later padding steps not counted)
            job.calculator_forced = self.calculator.forced_rows.get(i, 0)
        job.finished = now
        job.done.set()


def stop_at(text: str, stops: tuple[str, ...]) -> int | None:
    """Where ``text`` first contains one of ``stops`` (the earliest start), or None."""
    found = [k for k in (text.find(s) for s in stops) if k >= 0]
    return min(found) if found else None


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that is a proper prefix of a stop string (not streamed yet)."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


def top_logprobs(row, token: int, k: int) -> tuple:
    """(token, its log-probability, [(id, log-probability)] of the k most likely) from one row of log-probs."""
    import numpy as np

    row = np.asarray(row)
    if k <= 0:
        return token, float(row[token]), []
    k = min(k, row.shape[0])
    top = np.argpartition(-row, k - 1)[:k] if k < row.shape[0] else np.arange(row.shape[0])
    top = top[np.argsort(-row[top], kind="stable")]
    return token, float(row[token]), [(int(t), float(row[t])) for t in top]


class RowLimits:
    """Stopping criterion: row i is done once it has generated ``limits[i]`` tokens or the streamer has ended its
    row (a stop string; EOS transformers sees itself). transformers asks the criteria before it streams the step,
    so a row ended by a stop string is seen one step late: at most one extra step, never streamed."""

    def __init__(self, prompt_len: int, limits: list[int], streamer: RowStreamer | None = None) -> None:
        import torch

        self.prompt_len = prompt_len
        self.limits = torch.tensor(limits)
        self.streamer = streamer

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = (input_ids.shape[1] - self.prompt_len) >= self.limits
        if self.streamer is not None:
            done = done | ~torch.tensor(self.streamer.open)
        return done


class RowLogprobs:
    """A logits processor that hands each step's log-softmax of the model's logits to the streamer (the rows
    asking for log-probabilities read theirs). Custom processors run before temperature and top-p, so these are
    the model's own distribution, as OpenAI reports them."""

    def __init__(self, streamer: RowStreamer) -> None:
        self.streamer = streamer

    def __call__(self, input_ids, scores):
        import torch

        self.streamer.step_logprobs = torch.log_softmax(scores.float(), dim=-1).numpy()
        return scores


def row_lora_supported(model, adapter: str) -> bool:
    """Whether every LoRA layer of ``adapter`` is plain LoRA on a Linear (what ``RowLora`` computes); a trained
    full copy of a module (``modules_to_save``) is not: PEFT's own path swaps it in."""
    import torch

    for module in model.modules():
        if adapter in (getattr(module, "modules_to_save", None) or {}):
            return False
        if not hasattr(module, "lora_A"):
            continue
        if adapter in getattr(module, "lora_embedding_A", {}) or adapter in getattr(module, "lora_variant", {}):
            return False
        if adapter not in module.lora_A:
            continue
        if type(module.lora_A[adapter]) is not torch.nn.Linear or getattr(module, "fan_in_fan_out", False) \
                or getattr(module, "lora_bias", {}).get(adapter, False):
            return False
    return True


class RowLora:
    """Forward hooks adding each row's own LoRA term while PEFT's adapters are disabled (see the module doc).

    Hooks are registered once per model (a hook does nothing while no batch is active); the concatenated A and
    B matrices and the per-adapter scaling tables are built once per set of adapters in a batch, so a batch on
    other modifiers costs one small index per distinct layer shape. Rebuilt after attach/detach."""

    def __init__(self, model) -> None:
        self.modules = [m for m in model.modules() if hasattr(m, "lora_A")]
        self.current: dict[int, tuple] = {}  # id(module) -> (a_cat, b_cat, mask) for the active batch
        self.cache: dict[tuple, list] = {}  # adapters used -> [(module, a_cat, b_cat, table)]
        self.handles = [m.register_forward_hook(self._hook) for m in self.modules]

    def _hook(self, module, args, output):
        slot = self.current.get(id(module))
        if slot is None:
            return None
        import torch.nn.functional as F

        a_cat, b_cat, mask = slot
        h = F.linear(args[0].to(a_cat.dtype), a_cat)
        h = h * (mask[:, None, :] if h.dim() == 3 else mask)
        return output + F.linear(h, b_cat).to(output.dtype)

    def _layers(self, used: tuple) -> list:
        import torch

        if used not in self.cache:
            layers, tables = [], {}
            for module in self.modules:
                present = [a for a in used if a in module.lora_A]
                if not present:
                    continue
                a_cat = torch.cat([module.lora_A[a].weight for a in present])  # [sum of ranks, in]
                b_cat = torch.cat([module.lora_B[a].weight for a in present], dim=1)  # [out, sum of ranks]
                ranks = [module.lora_A[a].weight.shape[0] for a in present]
                key = (tuple(present), tuple(ranks), tuple(float(module.scaling[a]) for a in present), a_cat.dtype)
                if key not in tables:  # row u of the table: adapter used[u]'s scaling on its columns
                    table = torch.zeros(len(used) + 1, sum(ranks), dtype=a_cat.dtype)  # last row: the base
                    col = 0
                    for a, r in zip(present, ranks):
                        table[used.index(a), col:col + r] = module.scaling[a]
                        col += r
                    tables[key] = table
                layers.append((module, a_cat, b_cat, tables[key]))
            self.cache[used] = layers
        return self.cache[used]

    def activate(self, rows: list[str | None]) -> None:
        import torch

        used = tuple(sorted({a for a in rows if a is not None}))
        idx = torch.tensor([used.index(a) if a is not None else len(used) for a in rows])
        masks: dict[int, object] = {}
        current = {}
        for module, a_cat, b_cat, table in self._layers(used):
            if id(table) not in masks:
                masks[id(table)] = table[idx]
            current[id(module)] = (a_cat, b_cat, masks[id(table)])
        self.current = current

    def deactivate(self) -> None:
        self.current = {}

    def remove(self) -> None:
        self.deactivate()
        for h in self.handles:
            h.remove()
        self.handles = []


SIZES_KEPT = 1024


class Batcher:
    """Runs the queued jobs on one thread through ``runner`` (``run(jobs)``, ``can_mix(adapters)``): batches
    of up to ``max_batch`` requests, or control calls (attach/detach) between them."""

    def __init__(self, runner, *, max_batch: int = 8) -> None:
        self.runner = runner
        self.max_batch = max_batch
        self.pending: list[Job] = []  # requests and control calls, in arrival order
        self.cond = threading.Condition()
        self.driver: threading.Thread | None = None  # a thread in drive(); without one, waiters run the work
        self.leading = False
        self.sizes: deque[int] = deque(maxlen=SIZES_KEPT)  # the last batch sizes run, for tests and benchmarks
        self.batches = 0  # batches run in all (a server runs for weeks: counts, not lists, grow)

    def submit(self, job: Job) -> Job:
        job.submitted = time.perf_counter()
        with self.cond:
            self.pending.append(job)
            self.cond.notify_all()
        return job

    def wait(self, job: Job) -> Job:
        """Block until ``job`` is done; with no driver thread, run the waiting work on this thread meanwhile."""
        while not job.done.is_set():
            with self.cond:
                driven = self.driver is not None and self.driver is not threading.current_thread()
                if driven or self.leading or not self.pending:
                    self.cond.wait(0.05)
                    continue
                self.leading = True
                work = self._take()
            try:
                self._run(work)
            finally:
                with self.cond:
                    self.leading = False
                    self.cond.notify_all()
        return job

    def call(self, fn: Callable[[], object]) -> object:
        """Run ``fn`` on the model's thread between batches (attach/detach) and return its result."""
        job = self.wait(self.submit(Job([], None, 0, control=fn)))
        if job.error is not None:
            raise job.error
        return job.result

    def drive(self, stop: threading.Event, *, trimmer=None) -> None:
        """Make the calling thread the model's thread until ``stop`` is set (``llora serve``). ``trimmer``
        (engine/heap.py ``Trimmer``) returns freed heap memory to the OS between batches, at most every 30 s."""
        self.driver = threading.current_thread()
        try:
            while not stop.is_set():
                if trimmer is not None:
                    trimmer.maybe()
                with self.cond:
                    if not self.pending:
                        self.cond.wait(0.2)
                        continue
                    work = self._take()
                self._run(work)
        finally:
            self.driver = None

    def _take(self) -> list[Job]:
        """A control call alone, or the oldest job and the waiting jobs that can share its forward pass."""
        head = self.pending[0]
        batch = [head]
        if head.control is None and head.key()[0] != "seeded":
            for job in self.pending[1:]:
                if len(batch) >= self.max_batch:
                    break
                if job.control is None and job.key() == head.key() and self.runner.can_mix(
                        {j.adapter for j in batch} | {job.adapter}):
                    batch.append(job)
        for job in batch:
            self.pending.remove(job)
        return batch

    def _run(self, work: list[Job]) -> None:
        try:
            if work[0].control is not None:
                work[0].result = work[0].control()
                work[0].done.set()
            else:
                for job in work:
                    job.batch_size = len(work)
                self.sizes.append(len(work))
                self.batches += 1
                self.runner.run(work)
        except BaseException as e:  # every caller in the batch gets the error
            for job in work:
                if not job.done.is_set():
                    job.error = e
                    job.done.set()


class TransformersBatches:
    """Batches on a transformers (PEFT) model: left-padded rows, per-row LoRA (``RowLora``) or PEFT's paths."""

    def __init__(self, get_model: Callable, tokenizer, *, row_lora: Callable[[str], bool] = lambda name: True,
                 lora_path: str = "rows") -> None:
        self.get_model = get_model
        self.tok = tokenizer
        self.row_lora = row_lora  # adapter -> can RowLora run it (else PEFT's set_adapter, one per batch)
        self.lora_path = lora_path  # "rows" (RowLora) or "peft" (set_adapter / adapter_names), for comparisons
        self.rows: RowLora | None = None  # built on the first batch with adapters, dropped when they change
        self.layer_adapters: list | None = None  # one per decoder layer (dynamic depth), set by the engine

    def can_mix(self, adapters: set) -> bool:
        return len(adapters) <= 1 or all(self.row_lora(a) for a in adapters if a is not None)

    def adapters_changed(self) -> None:
        """Called on the model's thread after attach/detach: the hooks and cached matrices are stale."""
        if self.rows is not None:
            self.rows.remove()
            self.rows = None

    def prepare(self, adapters: list[str]) -> None:
        """Build the hooks and each adapter's matrices now (at load/attach), not in a request's first token."""
        model = self.get_model()
        ready = [a for a in adapters if self.row_lora(a)]
        if not ready or self.lora_path != "rows":
            return
        if self.rows is None:
            self.rows = RowLora(model)
        for a in ready:
            self.rows._layers((a,))

    def _depth(self, model, layers: tuple[int, ...]):
        """The batch's layer set replaced by its adapters for the whole generate (prefill and decode), or nothing.
        Every job of a batch has the same set (``Job.key``)."""
        from contextlib import nullcontext

        if not layers:
            return nullcontext()
        if self.layer_adapters is None:
            raise RuntimeError("a request asked for replaced layers but no layer adapters are loaded")
        from llora_cli.router.depth.layers import replaced_layers

        return replaced_layers(model, layers, self.layer_adapters)

    def run(self, jobs: list[Job]) -> None:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        tok = self.tok
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        width = max(len(j.input_ids) for j in jobs)
        ids = torch.full((len(jobs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for i, j in enumerate(jobs):  # left padding: every row's last prompt token at the same position
            ids[i, width - len(j.input_ids):] = torch.tensor(j.input_ids)
            mask[i, width - len(j.input_ids):] = 1
        model = self.get_model()
        eos = model.generation_config.eos_token_id
        streamer = RowStreamer(tok, jobs, set(eos if isinstance(eos, list) else [] if eos is None else [eos]))
        head = jobs[0]
        kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=max(j.max_tokens for j in jobs),
                      pad_token_id=pad, streamer=streamer, do_sample=head.temperature > 0,
                      stopping_criteria=StoppingCriteriaList([RowLimits(width, [j.max_tokens for j in jobs],
                                                                        streamer)]))
        processors, calc = [], None
        if streamer.wants_logprobs:  # first: the model's own distribution (as llama.cpp's engine reports it)
            processors.append(RowLogprobs(streamer))
        if any(j.calculator for j in jobs):
            from llora_cli.calculator import CalculatorLogitsProcessor

            streamer.calculator = calc = CalculatorLogitsProcessor(tok, [j.calculator for j in jobs])
            processors.append(calc)
        if processors:
            kwargs["logits_processor"] = LogitsProcessorList(processors)
        if head.temperature > 0:
            kwargs.update(temperature=head.temperature, top_p=head.top_p)
        rows = [j.adapter for j in jobs]
        named = {a for a in rows if a is not None}
        with torch.inference_mode(), self._depth(model, head.layers):
            if head.seed is not None:
                torch.manual_seed(head.seed)
            if not hasattr(model, "peft_config"):
                model.generate(**kwargs)
            elif not named:
                with model.disable_adapter():
                    model.generate(**kwargs)
            elif self.lora_path == "rows" and all(self.row_lora(a) for a in named):
                if self.rows is None:
                    self.rows = RowLora(model)
                self.rows.activate(rows)
                try:
                    with model.disable_adapter():
                        model.generate(**kwargs)
                finally:
                    self.rows.deactivate()
            elif len(set(rows)) == 1:
                model.set_adapter(head.adapter)
                model.generate(**kwargs)
            else:  # PEFT's mixed-batch path (the reference RowLora is compared with)
                model.generate(**kwargs, adapter_names=[a or "__base__" for a in rows])
        streamer.end()
