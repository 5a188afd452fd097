"""Training throughput: our BertForPreTraining step vs transformers' on the same inputs.

Both models get the same config, weights, batch and sequence length (full rows, no padding);
both compute MLM + NSP loss, backward, and an AdamW step. Ours runs the MLM head only at the
masked positions (transformers runs it at every position: its design), one fused QKV GEMM, and
no attention mask on full rows (neither model gets one). Prints tokens/s of each and the ratio,
measured alternately in one process, and MFU on CUDA.

  python bench/train_throughput.py --preset mini --seq-len 128 --batch-size 32
  python bench/train_throughput.py --device cuda --preset base --batch-size 64 --peak-tflops 989
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bertserve.training.config import preset
from bertserve.training.model import BertForPreTraining, flops_per_token, pretraining_loss


def make_batch(vocab: int, batch: int, seq: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, seq), generator=g)
    types = torch.zeros_like(ids)
    types[:, seq // 2 :] = 1
    chosen = torch.rand(batch, seq, generator=g) < 0.15
    chosen[:, 0] = chosen[:, -1] = False
    positions = chosen.flatten().nonzero().squeeze(1)
    labels = ids.flatten()[positions]
    hf_labels = torch.full_like(ids, -100)
    hf_labels[chosen] = ids[chosen]
    nsp = torch.randint(0, 2, (batch,), generator=g)
    to = {"device": device}
    return {
        "ids": ids.to(**to),
        "mask": torch.ones_like(ids).to(**to),
        "types": types.to(**to),
        "positions": positions.to(**to),
        "labels": labels.to(**to),
        "hf_labels": hf_labels.to(**to),
        "nsp": nsp.to(**to),
    }


def timed(step: Callable[[], None], device: torch.device, iters: int) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="mini")
    p.add_argument("--vocab-size", type=int, default=30522)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(ours)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak, for MFU")
    p.add_argument("--json", type=Path, help="write the figures here too")
    p.add_argument(
        "--no-dropout",
        action="store_true",
        help="also time ours with both dropouts at 0 (Cramming's setting; compiled too with "
        "--compile): what dropout's random masks cost a step",
    )
    p.add_argument(
        "--profile", action="store_true", help="print the top kernels of 3 steps of ours (CUDA)"
    )
    args = p.parse_args()

    import transformers

    device = torch.device(args.device)
    cfg = preset(args.preset, vocab_size=args.vocab_size)
    torch.manual_seed(0)
    ours = BertForPreTraining(cfg).to(device).train()
    hf_cfg = transformers.BertConfig(**{k: v for k, v in cfg.__dict__.items()})
    theirs = transformers.BertForPreTraining._from_config(hf_cfg, attn_implementation="sdpa")
    theirs.load_state_dict(ours.state_dict(), strict=False)
    theirs.to(device).train()
    batch = make_batch(cfg.vocab_size, args.batch_size, args.seq_len, device)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    fused = device.type in ("cpu", "cuda")  # as bert-pretrain runs it
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4, fused=fused or None)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-4, fused=fused or None)

    def make_step(model, opt, forward):
        def step() -> None:
            with autocast:
                loss = forward(model)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    def ours_forward(model):
        # the rows are full, so no mask, as bert-pretrain runs a batch without padding
        out = model(batch["ids"], None, batch["types"], batch["positions"])
        return pretraining_loss(out, batch["labels"], batch["nsp"])[0]

    def theirs_forward(model):
        return model(
            input_ids=batch["ids"],
            attention_mask=None,  # full rows: no mask for either model
            token_type_ids=batch["types"],
            labels=batch["hf_labels"],
            next_sentence_label=batch["nsp"],
        ).loss

    steps = {
        "ours": make_step(ours, opt_ours, ours_forward),
        "transformers": make_step(theirs, opt_theirs, theirs_forward),
    }
    if args.compile:
        compiled = torch.compile(ours)
        steps["ours+compile"] = make_step(compiled, opt_ours, ours_forward)
    if args.no_dropout:
        free_cfg = preset(
            args.preset,
            vocab_size=args.vocab_size,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        free = BertForPreTraining(free_cfg).to(device).train()
        free.load_state_dict(ours.state_dict())
        opt_free = torch.optim.AdamW(free.parameters(), lr=1e-4, fused=fused or None)
        steps["ours-dropout"] = make_step(free, opt_free, ours_forward)
        if args.compile:
            steps["ours-dropout+compile"] = make_step(torch.compile(free), opt_free, ours_forward)
    for step in steps.values():  # warm-up (and compile)
        for _ in range(3):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name].append(timed(step, device, args.iters))
    tokens = args.batch_size * args.seq_len
    figures: dict[str, object] = {
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "preset": args.preset,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    print(
        f"{args.preset} preset, batch {args.batch_size} x seq {args.seq_len} on {device} "
        f"({figures['device']}, {torch.get_num_threads()} threads)"
    )
    for name, samples in times.items():
        per_step = statistics.median(samples)
        rate = tokens / per_step
        figures[f"{name}_tokens_per_s"] = rate
        line = f"  {name:21s} {rate:12,.0f} tokens/s  ({per_step * 1000:.1f} ms/step)"
        if device.type == "cuda":
            mfu = rate * flops_per_token(cfg, args.seq_len) / (args.peak_tflops * 1e12)
            figures[f"{name}_mfu"] = mfu
            line += f"  MFU {mfu:.1%}"
        print(line)
    if args.profile and device.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        name = "ours+compile" if args.compile else "ours"
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                steps[name]()
            torch.cuda.synchronize()
        print(f"top kernels, 3 steps of {name}:")
        print(
            prof.key_averages().table(
                sort_by="self_device_time_total", row_limit=18, max_name_column_width=70
            )
        )
    ratio = figures["ours_tokens_per_s"] / figures["transformers_tokens_per_s"]  # type: ignore[operator]
    figures["ratio"] = ratio
    print(f"  ratio ours / transformers: {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
