"""Batching of concurrent requests on one loaded model, modifiers mixed in one forward pass.

A single worker thread owns the model. Requests (``Job``) queue up while it runs a batch; when the batch ends
it takes the oldest waiting job and every waiting job that can share a forward pass with it (up to
``max_batch``), left-pads their prompts and runs one ``generate``:
- all rows on one modifier: ``set_adapter`` (or ``disable_adapter`` for the base alone), the plain path;
- rows on different modifiers (and ``__base__`` rows): PEFT's mixed-adapter batch, ``adapter_names=[...]``,
  which runs each adapter's LoRA product on its own rows inside the shared forward pass.
Rows stop on their own EOS or their own ``max_tokens`` (a per-row stopping criterion) and stream their own text;
a finished row's caller returns while the rest of the batch goes on. Static batches, not continuous: a job
that arrives while a batch runs waits for that batch to end (docs/runtime.md).

What can share a batch: the same sampling settings (greedy, or the same temperature and top-p), and no
seed (a seeded request runs alone, so that its seed reproduces it); DoRA modifiers only with rows on the same
modifier (PEFT refuses ``adapter_names`` with DoRA).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

BASE_ROW = "__base__"  # PEFT's name for "no adapter" in adapter_names


@dataclass
class Job:
    input_ids: list[int]
    adapter: str | None  # adapter name (the modifier's id) or None for the base alone
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    on_text: Callable[[str], None] | None = None
    # filled in by the worker
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    submitted: float = 0.0
    first_token: float | None = None
    finished: float | None = None
    batch_size: int = 0
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def key(self) -> tuple:
        if self.seed is not None:
            return ("seeded", id(self))
        if self.temperature <= 0:
            return ("greedy",)
        return ("sample", self.temperature, self.top_p)


class RowStreamer:
    """A transformers streamer for a batch: every generated step gives one token per row; each row's text is
    decoded incrementally and handed to its job's ``on_text`` (held back at an unfinished word or an incomplete
    UTF-8 sequence, like transformers' TextStreamer)."""

    def __init__(self, tokenizer, jobs: list[Job], eos: set[int]) -> None:
        self.tok = tokenizer
        self.jobs = jobs
        self.eos = eos
        self.prompt_seen = False
        self.printed = [0] * len(jobs)
        self.open = [True] * len(jobs)

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate hands over the prompt first
            self.prompt_seen = True
            return
        now = time.perf_counter()
        for i, token in enumerate(value.reshape(-1).tolist()):
            if not self.open[i]:
                continue
            job = self.jobs[i]
            if job.first_token is None:
                job.first_token = now
            job.tokens.append(token)
            if token in self.eos:
                self._close(i, now)
                continue
            self._emit(i, final=False)
            if len(job.tokens) >= job.max_tokens:
                self._close(i, now)

    def end(self) -> None:
        now = time.perf_counter()
        for i in range(len(self.jobs)):
            if self.open[i]:
                self._close(i, now)

    def _text(self, job: Job) -> str:
        ids = job.tokens[:-1] if job.tokens and job.tokens[-1] in self.eos else job.tokens
        return self.tok.decode(ids, skip_special_tokens=True)

    def _emit(self, i: int, final: bool) -> None:
        job = self.jobs[i]
        text = self._text(job)
        if final:
            upto = len(text)
        elif text.endswith("\ufffd"):
            return
        elif text.endswith("\n"):
            upto = len(text)
        else:
            upto = text.rfind(" ") + 1
        if upto > self.printed[i]:
            piece = text[self.printed[i]:upto]
            self.printed[i] = upto
            if job.on_text:
                job.on_text(piece)

    def _close(self, i: int, now: float) -> None:
        self.open[i] = False
        job = self.jobs[i]
        self._emit(i, final=True)
        job.text = self._text(job)
        job.finished = now
        job.done.set()


class RowLimits:
    """Stopping criterion: row i is done once it has generated ``limits[i]`` tokens."""

    def __init__(self, prompt_len: int, limits: list[int]) -> None:
        import torch

        self.prompt_len = prompt_len
        self.limits = torch.tensor(limits)

    def __call__(self, input_ids, scores, **kwargs):
        return (input_ids.shape[1] - self.prompt_len) >= self.limits


class Batcher:
    """One worker thread running batches of jobs on ``model`` (a PEFT model when adapters are attached)."""

    def __init__(self, get_model: Callable, tokenizer, model_lock: threading.RLock, *, max_batch: int = 8,
                 dora: Callable[[str], bool] = lambda name: False) -> None:
        self.get_model = get_model
        self.tok = tokenizer
        self.model_lock = model_lock
        self.max_batch = max_batch
        self.dora = dora
        self.pending: list[Job] = []
        self.cond = threading.Condition()
        self.worker: threading.Thread | None = None
        self.batches = 0  # batches run, and the sizes seen: for tests and the benchmarks
        self.sizes: list[int] = []

    def submit(self, job: Job) -> Job:
        job.submitted = time.perf_counter()
        with self.cond:
            self.pending.append(job)
            if self.worker is None or not self.worker.is_alive():
                self.worker = threading.Thread(target=self._loop, name="llora-batcher", daemon=True)
                self.worker.start()
            self.cond.notify_all()
        return job

    def _take(self) -> list[Job]:
        """The oldest job and the waiting jobs that can share its forward pass (FIFO order)."""
        head = self.pending[0]
        batch = [head]
        for job in self.pending[1:]:
            if len(batch) >= self.max_batch:
                break
            if job.key() != head.key() or head.key()[0] == "seeded":
                continue
            adapters = {j.adapter for j in batch} | {job.adapter}
            if len(adapters) > 1 and any(a is not None and self.dora(a) for a in adapters):
                continue
            batch.append(job)
        for job in batch:
            self.pending.remove(job)
        return batch

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.pending:
                    if not self.cond.wait(timeout=30):
                        if not self.pending:  # idle: let the thread end, the next submit starts another
                            self.worker = None
                            return
                batch = self._take()
            try:
                self.run(batch)
            except BaseException as e:  # every caller in the batch gets the error
                for job in batch:
                    if not job.done.is_set():
                        job.error = e
                        job.done.set()

    def run(self, jobs: list[Job]) -> None:
        import torch
        from transformers import StoppingCriteriaList

        tok = self.tok
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        width = max(len(j.input_ids) for j in jobs)
        ids = torch.full((len(jobs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for i, j in enumerate(jobs):  # left padding: every row's last prompt token at the same position
            ids[i, width - len(j.input_ids):] = torch.tensor(j.input_ids)
            mask[i, width - len(j.input_ids):] = 1
        with self.model_lock:
            model = self.get_model()
            eos = model.generation_config.eos_token_id
            eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
            streamer = RowStreamer(tok, jobs, eos_ids)
            head = jobs[0]
            kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=max(j.max_tokens for j in jobs),
                          pad_token_id=pad, streamer=streamer, do_sample=head.temperature > 0,
                          stopping_criteria=StoppingCriteriaList([RowLimits(width, [j.max_tokens for j in jobs])]))
            if head.temperature > 0:
                kwargs.update(temperature=head.temperature, top_p=head.top_p)
            for j in jobs:
                j.batch_size = len(jobs)
            self.batches += 1
            self.sizes.append(len(jobs))
            adapters = {j.adapter for j in jobs}
            attached = hasattr(model, "peft_config")
            with torch.inference_mode():
                if head.seed is not None:
                    torch.manual_seed(head.seed)
                if not attached:
                    model.generate(**kwargs)
                elif len(adapters) == 1 and head.adapter is None:
                    with model.disable_adapter():
                        model.generate(**kwargs)
                elif len(adapters) == 1:
                    model.set_adapter(head.adapter)
                    model.generate(**kwargs)
                else:
                    model.generate(**kwargs, adapter_names=[j.adapter or BASE_ROW for j in jobs])
            streamer.end()
