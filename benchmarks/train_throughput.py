"""Training throughput: the pairs arm vs the documents arm, and the training loop vs a bare PyTorch loop.

    .venv/bin/python benchmarks/train_throughput.py --sizes tiny --steps 20
    .venv/bin/python benchmarks/train_throughput.py --run runs/demo --sizes tiny,small --device cuda

Data: the kept pairs of --run, or (default) pairs built from the packaged Wikipedia leads (an instruction about the
article, an answer of two of its sentences). Both arms are built exactly as `fineinstructions train` builds them
(shared BPE tokenizer, token-matched packed blocks). For each preset, alternating over --rounds:

- `train_loop` on each arm for --steps optimizer steps (from scratch each time, in a temporary folder): training
  tokens/s as the loop reports it (step time only) and per wall second of the whole call (setup, logging, the final
  checkpoint included);
- a bare loop on the same batches of the pairs arm: the same model and AdamW, `loss.backward()`, clipping, `step()`,
  nothing else.

Printed: tokens/s per arm and their ratio (same shapes, so about 1.0 is expected), and bare / loop (1.0 = no
overhead).
"""

from __future__ import annotations

import argparse
import math
import re
import tempfile
import time
from pathlib import Path

import torch

from fineinstructions.io.sources import wikipedia_documents
from fineinstructions.training.data import PairRow, build_arms, read_pairs, split_heldout, tokenizer_texts
from fineinstructions.training.loop import (
    PackedData,
    TrainSettings,
    data_order,
    make_optimizer,
    masked_loss_sum,
    resolve_device,
    train_loop,
)
from fineinstructions.training.models import build_model, count_parameters
from fineinstructions.training.tokenizer import train_bpe_tokenizer


def wikipedia_pairs(n_documents: int) -> list[PairRow]:
    """Two pairs per Wikipedia lead: a question about the article and two of its sentences as the answer."""
    out: list[PairRow] = []
    for doc in wikipedia_documents():
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", doc.text) if len(s) > 20]
        if len(doc.text) < 400 or len(sentences) < 3:
            continue
        out.append(PairRow(doc.document_id, doc.text, f"What is {doc.title}?", " ".join(sentences[:2])))
        out.append(PairRow(doc.document_id, doc.text, f"Tell me more about {doc.title}.", " ".join(sentences[1:3])))
        if len(out) >= 2 * n_documents:
            break
    return out


def bare_loop(model: torch.nn.Module, data: PackedData, settings: TrainSettings, steps: int) -> float:
    """Seconds for `steps` plain optimizer steps over the loop's batches: forward, backward, clip, step."""
    device = resolve_device(settings.device)
    model.to(device).train()
    optimizer = make_optimizer(model, settings, device)
    order = data_order(len(data), settings.epochs, settings.seed)
    per_step = settings.blocks_per_step
    autocast = settings.dtype == "bfloat16"
    start = time.perf_counter()
    for step in range(steps):
        rows = order[step * per_step:(step + 1) * per_step]
        targets = int(data.loss_mask[rows, 1:].sum())
        for lo in range(0, len(rows), settings.batch_size):
            micro = rows[lo:lo + settings.batch_size]
            ids = torch.from_numpy(data.input_ids[micro]).long().to(device)
            mask = torch.from_numpy(data.loss_mask[micro]).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss_sum, _ = masked_loss_sum(model, ids, mask)
            (loss_sum / targets).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default=None, help="run folder / dataset of pairs (default: Wikipedia pairs)")
    parser.add_argument("--documents", type=int, default=400, help="Wikipedia documents when --run is unset")
    parser.add_argument("--sizes", default="tiny", help="comma-separated presets, e.g. tiny,small")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pairs = read_pairs(args.run) if args.run else wikipedia_pairs(args.documents)
    train_pairs = split_heldout(pairs, 0.1).train
    started = time.perf_counter()
    tokenizer = train_bpe_tokenizer(tokenizer_texts(train_pairs), args.vocab_size)
    arms = build_arms(tokenizer, train_pairs, args.seq_len, seed=0)
    prep = time.perf_counter() - started
    blocks = len(arms["pairs"].train)
    steps_available = blocks // args.batch_size
    steps = min(args.steps, steps_available)
    epochs = steps * args.batch_size / blocks
    settings = TrainSettings(seq_len=args.seq_len, batch_size=args.batch_size, epochs=epochs, log_every=10,
                             eval_every=10**9, checkpoint_every=10**9, device=args.device, dtype=args.dtype)
    device = resolve_device(args.device)
    print(f"{len(train_pairs)} training pairs, {blocks} matched blocks of {args.seq_len} per arm "
          f"(tokenizer + packing {prep:.1f} s); {steps} steps of {args.batch_size} blocks; device {device}, "
          f"{args.threads} CPU thread(s), dtype {args.dtype}")
    tokens_per_run = steps * args.batch_size * args.seq_len

    for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        loop_rate = {"pairs": [], "documents": []}
        wall_rate = {"pairs": [], "documents": []}
        bare_rate = []
        params = 0
        for _ in range(args.rounds):
            for arm in ("pairs", "documents"):
                model = build_model(size, len(tokenizer), seed=0, seq_len=args.seq_len,
                                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
                params = count_parameters(model)
                with tempfile.TemporaryDirectory() as tmp:
                    start = time.perf_counter()
                    result = train_loop(model, arms[arm].train, settings, Path(tmp), fingerprint="bench")
                    wall = time.perf_counter() - start
                assert result.tokens_seen == tokens_per_run, (result.tokens_seen, tokens_per_run)
                loop_rate[arm].append(result.tokens_per_s)
                wall_rate[arm].append(result.tokens_seen / wall)
            model = build_model(size, len(tokenizer), seed=0, seq_len=args.seq_len)
            bare_rate.append(tokens_per_run / bare_loop(model, arms["pairs"].train, settings, steps))

        def best(values: list[float]) -> float:
            return max(values) if values else math.nan  # the least disturbed round on a shared machine

        print(f"\n{size} ({params / 1e6:.1f}M parameters), best of {args.rounds} rounds, training tokens/s:")
        for arm in ("pairs", "documents"):
            print(f"  {arm:9s}: loop {best(loop_rate[arm]):9,.0f} (step time)   {best(wall_rate[arm]):9,.0f} "
                  "(wall, incl. setup + final checkpoint)")
        print(f"  pairs / documents          : {best(loop_rate['pairs']) / best(loop_rate['documents']):.3f}")
        print(f"  bare PyTorch loop (pairs)  : {best(bare_rate):9,.0f}")
        print(f"  bare / loop (step time)    : {best(bare_rate) / best(loop_rate['pairs']):.3f}")
        print(f"  bare / loop (wall)         : {best(bare_rate) / best(wall_rate['pairs']):.3f}")


if __name__ == "__main__":
    main()
