"""One greedy depth-search step with and without shared prefixes (issue 14: the search's cost).

Usage: python benchmarks/depth_search_sharing.py MODEL_DIR [--tokens 200] [--rounds 3] [--threads 2]

MODEL_DIR: a transformers checkpoint directory (safetensors), e.g. a base registered with ``llora bases add
smollm2`` (``$LLORA_HOME/artifacts/<id>``). A step of seed 002's greedy search (``llora_cli.router.depth.search``)
scores every candidate ``{c}`` (c = each decoder layer) of one query with teacher forcing: ``_answer_argmax`` on
``L`` copies of the query, in chunks of ``DEFAULT_BATCH`` rows. With ``share=True`` (llora's default) rows that
replaced the same layers below layer ``i`` run it once (``search.shared_rows``); ``share=False`` runs the real layer
on every row (the code before). The sequence is ``--tokens`` token ids (the prompt half, the answer half) drawn from
the vocabulary with a fixed seed: the cost depends on the length, not the text. The layer adapters are random
(std 0.02 up-projections: not the identity), the same for both. Rounds alternate the two, order reversed every
round; the argmax of both must be equal (the script stops otherwise). Prints wall seconds per step (median, min)
and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from llora_cli.router.depth import search
    from llora_cli.router.depth.layers import LayerAdapter, decoder_layers

    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32).eval()
    layers = len(decoder_layers(model))
    torch.manual_seed(0)
    adapters = []
    for _ in range(layers):
        a = LayerAdapter(model.config.hidden_size)
        torch.nn.init.normal_(a.up.weight, std=0.02)
        adapters.append(a.eval())
    ids = torch.randint(100, model.config.vocab_size, (args.tokens,), generator=torch.Generator().manual_seed(1))
    ids, start = ids.tolist(), args.tokens // 2
    sets = [{c} for c in range(layers)]
    times: dict[bool, list[float]] = {True: [], False: []}
    with search.mixed_layers(model, adapters) as mixed:
        for r in range(args.rounds):
            order = (True, False) if r % 2 == 0 else (False, True)
            got = {}
            for share in order:
                t = time.perf_counter()
                got[share] = search._answer_argmax(model, mixed, ids, start, sets, search.DEFAULT_BATCH, share=share)
                times[share].append(time.perf_counter() - t)
            if not torch.equal(got[True], got[False]):
                raise SystemExit("shared and unshared argmax differ: stop")
            print(f"round {r + 1}: shared {times[True][-1]:.2f} s, every row {times[False][-1]:.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{layers} candidates, {args.tokens} tokens, batch {search.DEFAULT_BATCH}, {args.threads} threads: "
          f"shared median {med[True]:.2f} s (min {min(times[True]):.2f}), every row median {med[False]:.2f} s "
          f"(min {min(times[False]):.2f}); shared / every row = {med[True] / med[False]:.3f}")


if __name__ == "__main__":
    main()
