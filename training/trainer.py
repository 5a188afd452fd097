"""The pretraining loop: data, model, AdamW, schedule, logging, evaluation, checkpoints.

Exact resume: the model, optimizer and data-stream state are saved together, the learning rate
is a function of the step, and dropout is reseeded from (seed, rank, step) at every step, so a
run killed at any point and resumed from its last checkpoint repeats the same losses.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from . import checkpoint as ckpt
from . import run_dir
from .batches import Batch, BatchSource, split_documents
from .config import BertConfig, TrainConfig, preset
from .corpus import Corpus
from .distributed import Rank, init_distributed, pick_device
from .io import trim_log, write_text_atomic
from .masking import Masker
from .model import BertForPreTraining, PreTrainingOutput, pretraining_loss
from .optim import adamw
from .pairs import PairGenerator
from .precision import autocast, use_bf16
from .prefetch import PrefetchedBatches
from .schedule import in_long_phase, lr_factor
from .tally import Tally
from .token_store import build_or_load
from .tokenizer import (
    SpecialIds,
    continuation_mask,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)


# -- options and optimizer ---------------------------------------------------------------------
def on_for(setting: str | bool, device: torch.device) -> bool:
    """An on/off/auto option (auto = on CUDA only); runs saved before it was one store a bool."""
    if isinstance(setting, bool):
        return setting
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    return adamw(model, cfg.lr, cfg.weight_decay, cfg.adam_betas, cfg.adam_eps)


# -- the run ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
    cfg: TrainConfig
    model_cfg: BertConfig
    out: Path
    rank: Rank
    device: torch.device
    tokenizer: Any
    specials: SpecialIds
    train_source: BatchSource | PrefetchedBatches
    eval_batches: list[Batch]
    model: BertForPreTraining
    step: int = 0
    elapsed: float = 0.0
    bf16: bool = False  # autocast to bf16 (see use_bf16)
    last_eval: dict[str, float] | None = None


def prepare(
    cfg: TrainConfig, model_overrides: dict[str, Any], resume: Path | None, overwrite: bool
) -> Run:
    rank = init_distributed("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    device = pick_device(cfg.device, rank)
    out = Path(cfg.out)
    continuing = resume is not None and out.resolve() == run_dir.run_of(resume).resolve()
    if not continuing:
        run_dir.check_new_run(out, overwrite)  # every rank, before any rank writes
    # what can be checked before minutes of tokenizer training: readable, enough documents
    corpus = Corpus.open(cfg.corpus)
    corpus.check_documents(2 if cfg.nsp else 1)
    rank.barrier()
    if rank.main:
        if not continuing:
            run_dir.clear_run(out)
        out.mkdir(parents=True, exist_ok=True)
        ckpt.clean_stale(out)
        if not continuing:
            write_text_atomic(out / run_dir.MARKER, cfg.to_json())  # marks the folder as a run
    rank.barrier()
    say = print if rank.main else (lambda *a, **k: None)

    if resume is not None:
        tokenizer = load_tokenizer(resume / "tokenizer.json")
    elif cfg.tokenizer:
        tokenizer = load_tokenizer(cfg.tokenizer, cfg.lowercase)
    else:
        if rank.main:
            say(f"training a WordPiece vocabulary (<= {cfg.vocab_size}) on {corpus.name}")
            trained = train_tokenizer(corpus.sentences(), cfg.vocab_size, cfg.lowercase)
            save_tokenizer(trained, out, cfg.lowercase, cfg.max_seq_len)
        rank.barrier()
        tokenizer = load_tokenizer(out / "tokenizer.json")
    specials = SpecialIds.of(tokenizer)

    if rank.main:
        store, cached = build_or_load(corpus, tokenizer, progress=cfg.progress)
    rank.barrier()
    if not rank.main:
        store, cached = build_or_load(corpus, tokenizer, progress=False)
    meta = store.meta
    say(
        f"corpus {corpus.name}: {meta['documents']} documents, {meta['sentences']} sentences, "
        f"{meta['tokens']} tokens{' (cached)' if cached else ''}"
    )
    if meta.get("bad_bytes"):
        say(f"warning: {meta['bad_bytes']} invalid UTF-8 bytes replaced in {meta['bad_files']}")

    if resume is not None:
        model_cfg = BertConfig.load(resume / "config.json")
    else:
        overrides = dict(model_overrides)
        overrides.setdefault(
            "max_position_embeddings", max(512, cfg.max_seq_len, cfg.long_seq_len or 0)
        )
        model_cfg = preset(cfg.preset, vocab_size=tokenizer.get_vocab_size(), **overrides)
        model_cfg.trained_heads = ["mlm", "nsp"] if cfg.nsp else ["mlm"]
    if model_cfg.vocab_size < tokenizer.get_vocab_size():
        raise ValueError("the model's vocab_size is smaller than the tokenizer's vocabulary")
    longest = max(cfg.max_seq_len, cfg.long_seq_len or 0)
    if longest > model_cfg.max_position_embeddings:
        raise ValueError(
            f"sequence length {longest} exceeds max_position_embeddings "
            f"{model_cfg.max_position_embeddings}"
        )

    train_docs, eval_docs = split_documents(store.num_documents, cfg.eval_fraction, cfg.seed)
    masker = Masker(
        specials,
        tokenizer.get_vocab_size(),
        cfg.masked_lm_prob,
        cfg.max_predictions,
        continuation_mask(tokenizer) if cfg.whole_word_masking else None,
    )

    pairs = PairGenerator(
        store,
        train_docs,
        specials,
        cfg.max_seq_len,
        cfg.short_seq_prob,
        cfg.nsp,
        cfg.seed * 1000 + rank.rank,
        cfg.pack,
    )
    train_source = BatchSource(pairs, masker, specials.pad, cfg.static_masking)
    eval_batches = []
    if len(eval_docs) >= 2 and cfg.eval_batches > 0:
        # one yardstick whatever the recipe: unpacked sequences masked at BERT's 15%, so runs
        # with other masking rates or packing report comparable held-out accuracy
        eval_masker = Masker(specials, tokenizer.get_vocab_size(), 0.15, 20)
        eval_pairs = PairGenerator(
            store, eval_docs, specials, cfg.max_seq_len, 0.0, cfg.nsp, cfg.seed * 1000 + 999
        )
        eval_source = BatchSource(eval_pairs, eval_masker, specials.pad, static_masking=True)
        eval_batches = [eval_source.next_batch(cfg.batch_size) for _ in range(cfg.eval_batches)]

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = BertForPreTraining(model_cfg).to(device)
    say(
        f"model: {model_cfg.num_hidden_layers} layers x {model_cfg.hidden_size}, "
        f"{model_cfg.num_attention_heads} heads, vocab {model_cfg.vocab_size}, "
        f"{model.num_parameters() / 1e6:.2f}M parameters, on {device}"
        + (f" x {rank.world} ranks" if rank.world > 1 else "")
    )
    bf16 = use_bf16(cfg.bf16, device)
    say(f"precision: {'bf16 autocast' if bf16 else 'fp32'} on {device.type}")
    return Run(
        cfg,
        model_cfg,
        out,
        rank,
        device,
        tokenizer,
        specials,
        train_source,
        eval_batches,
        model,
        bf16=bf16,
    )


@torch.no_grad()
def evaluate(run: Run, forward: Any) -> dict[str, float]:
    """Held-out losses and accuracies, strict: every scored position is shown as [MASK]
    (`mlm_acc`, `mlm_loss`). `mlm_acc_training_masking` scores the same positions masked as in
    training (10% kept, 10% random), the figure this used to report."""
    run.model.eval()
    strict, lenient = Tally(run.device), Tally(run.device)
    for batch in run.eval_batches:
        batch = batch.to(run.device)
        for tally, shown in ((strict, batch.fully_masked(run.specials.mask)), (lenient, batch)):
            with autocast(run.device, run.bf16):
                out = forward(shown)
            tally.add(out, shown, pretraining_loss(out, shown.masked_labels, shown.nsp_labels))
    run.model.train()
    result = strict.summary(len(run.eval_batches), Rank())  # every rank sees the same batches
    result["mlm_acc_training_masking"] = lenient.summary(len(run.eval_batches), Rank())["mlm_acc"]
    result.pop("tokens")
    result.pop("loss")
    if not run.cfg.nsp:
        result.pop("nsp_loss")
        result.pop("nsp_acc")
    return result


def save(run: Run, optimizer: torch.optim.Optimizer, directory: Path, with_state: bool) -> None:
    """Writes Contract 2 into `directory` (rank 0 only; data states gathered from all ranks)."""
    data_states: list[Any] = [run.train_source.state_dict()]
    if run.rank.world > 1:
        data_states = [None] * run.rank.world
        dist.all_gather_object(data_states, run.train_source.state_dict())
    if not run.rank.main:
        return
    ckpt.save_model(run.model, directory)
    save_tokenizer(run.tokenizer, directory, run.cfg.lowercase, run.cfg.max_seq_len)
    write_text_atomic(directory / "train_config.json", run.cfg.to_json())
    if with_state:
        ckpt.save_training_state(
            directory / ckpt.STATE_FILE,
            {
                "step": run.step,
                "elapsed": run.elapsed,
                "world_size": run.rank.world,
                "optimizer": optimizer.state_dict(),
                "data": data_states,
            },
        )


def restore(
    run: Run, optimizer: torch.optim.Optimizer, directory: Path, state: dict[str, Any]
) -> None:
    if state["world_size"] != run.rank.world:
        raise ValueError(
            f"{directory} was written by {state['world_size']} ranks; resume it with as many"
        )
    model = ckpt.load_model(directory)
    run.model.load_state_dict(model.state_dict())
    optimizer.load_state_dict(state["optimizer"])
    run.train_source.load_state_dict(state["data"][run.rank.rank])
    run.step, run.elapsed = int(state["step"]), float(state["elapsed"])


@contextmanager
def _logfile(path: Path, keep_through_step: int | None, enabled: bool) -> Iterator[Any]:
    """metrics.jsonl, trimmed on resume to the lines up to the resumed step."""
    if not enabled:
        yield None
        return
    trim_log(path, keep_through_step)
    with open(path, "a", encoding="utf-8") as handle:
        yield handle


def train(
    cfg: TrainConfig,
    model_overrides: dict[str, Any] | None = None,
    resume: Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Runs pretraining; returns the run directory (a loadable checkpoint at the end).
    `cfg.out` must be new or empty, or hold a previous run and `overwrite` be set, unless it is
    the run `resume` belongs to (see run_dir.py)."""
    # a damaged training state is refused before anything is written
    state = ckpt.load_training_state(resume / ckpt.STATE_FILE) if resume is not None else None
    run = prepare(cfg, model_overrides or {}, resume, overwrite)
    model, device, rank = run.model, run.device, run.rank
    optimizer = make_optimizer(model, cfg)
    if resume is not None and state is not None:
        restore(run, optimizer, resume, state)
        if rank.main:
            print(f"resumed from {resume} at step {run.step}")
    network: torch.nn.Module = model
    if rank.world > 1:
        network = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
        )
    compiled = on_for(cfg.compile, device)
    if compiled:
        network = torch.compile(network)  # type: ignore[assignment]

    def forward(batch: Batch) -> PreTrainingOutput:
        if compiled:  # the masked count changes every batch: compile for any, not once per count
            torch._dynamo.maybe_mark_dynamic(batch.masked_positions, 0)
        out: PreTrainingOutput = network(
            batch.input_ids, batch.model_mask, batch.token_type_ids, batch.masked_positions
        )
        return out

    deadline = cfg.time_budget_s
    bar = tqdm(
        total=cfg.max_steps,
        initial=run.step,
        disable=not (cfg.progress and rank.main),
        desc="pretraining",
        unit="step",
        dynamic_ncols=True,
    )
    tally = Tally(device)
    micro_batches = 0
    window_start = time.perf_counter()
    started = time.perf_counter() - run.elapsed
    feed = run.train_source
    with (
        ExitStack() as cleanup,
        _logfile(run.out / "metrics.jsonl", run.step if resume else None, rank.main) as log,
    ):
        if on_for(cfg.data_worker, device):
            assert isinstance(feed, BatchSource)
            feed = run.train_source = PrefetchedBatches(feed, cfg.batch_size)
            cleanup.callback(feed.close)
        model.train()
        while True:
            run.elapsed = time.perf_counter() - started
            if cfg.max_steps is not None and run.step >= cfg.max_steps:
                break
            if deadline is not None and run.elapsed >= deadline:
                break
            longer = cfg.long_seq_len and feed.pairs.max_seq_len != cfg.long_seq_len
            if longer and in_long_phase(cfg, run.step, run.elapsed):
                feed.set_max_seq_len(cfg.long_seq_len)
                tqdm.write(f"step {run.step}: sequences of {cfg.long_seq_len} from here on")
            # dropout depends on (seed, rank, step) alone, so resumed steps repeat exactly
            torch.manual_seed(hash((cfg.seed, rank.rank, run.step)) & 0x7FFF_FFFF)
            lr = cfg.lr * lr_factor(cfg, run.step, run.elapsed)
            for group in optimizer.param_groups:
                group["lr"] = lr
            for micro in range(cfg.grad_accum):
                batch = feed.next_batch(cfg.batch_size).to(device)
                sync = micro == cfg.grad_accum - 1 or rank.world == 1
                context = nullcontext() if sync else network.no_sync()  # type: ignore[operator]
                with context, autocast(device, run.bf16):
                    out = forward(batch)
                    losses = pretraining_loss(out, batch.masked_labels, batch.nsp_labels)
                    loss = losses[0]
                    if rank.world > 1 and not cfg.nsp:
                        # DDP reduces every parameter's gradient: keep the idle pooler and NSP
                        # head in the graph with a zero weight
                        loss = loss + 0.0 * out.nsp_logits.sum()
                    (loss / cfg.grad_accum).backward()
                tally.add(out, batch, losses)
                micro_batches += 1
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            run.step += 1
            bar.update(1)

            if run.step % cfg.log_every == 0 or run.step == cfg.max_steps:
                window = time.perf_counter() - window_start
                stats = tally.summary(micro_batches, rank)
                tokens = stats.pop("tokens")
                record = {
                    "step": run.step,
                    "split": "train",
                    **stats,
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "tokens_per_s": tokens / window,
                    "elapsed_s": time.perf_counter() - started,
                }
                if not cfg.nsp:
                    record.pop("nsp_loss")
                    record.pop("nsp_acc")
                if not all(math.isfinite(v) for v in (stats["loss"], float(grad_norm))):
                    raise FloatingPointError(f"loss or gradient is not finite at step {run.step}")
                bar.set_postfix(_postfix(record), refresh=False)
                if log is not None:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                tally, micro_batches, window_start = Tally(device), 0, time.perf_counter()

            if run.eval_batches and cfg.eval_every and run.step % cfg.eval_every == 0:
                _log_eval(run, forward, log)
            if cfg.save_every and run.step % cfg.save_every == 0:
                run.elapsed = time.perf_counter() - started
                _save_checkpoint(run, optimizer)
        bar.close()
        if run.eval_batches and (not cfg.eval_every or run.step % cfg.eval_every):
            _log_eval(run, forward, log)
    if not cfg.save_every or run.step % cfg.save_every:
        _save_checkpoint(run, optimizer)
    save(run, optimizer, run.out, with_state=False)
    if rank.main:
        from .plot import plot_metrics

        plot_metrics(run.out / "metrics.jsonl", run.out / "training_curves.png")
        held_out = ""
        if run.last_eval is not None:
            held_out = (
                f"; held-out MLM accuracy {run.last_eval['mlm_acc']:.3f} (every scored "
                f"position [MASK]; loss {run.last_eval['mlm_loss']:.3f}; with the training "
                f"masking {run.last_eval['mlm_acc_training_masking']:.3f})"
            )
        print(f"done: {run.step} steps in {run.elapsed:.0f}s{held_out}; model in {run.out}")
    if rank.world > 1:
        dist.destroy_process_group()
    return run.out


def _save_checkpoint(run: Run, optimizer: torch.optim.Optimizer) -> None:
    if run.rank.main:
        ckpt.write_checkpoint(
            run.out,
            run.step,
            lambda tmp: save(run, optimizer, tmp, True),
            run.cfg.keep_checkpoints,
        )
    elif run.rank.world > 1:
        save(run, optimizer, run.out, with_state=True)  # joins the all_gather of data states
    run.rank.barrier()


def _log_eval(run: Run, forward: Any, log: Any) -> None:
    result = evaluate(run, forward)
    run.last_eval = result
    if log is not None:
        log.write(json.dumps({"step": run.step, "split": "eval", **result}) + "\n")
        log.flush()
        tqdm.write(
            "eval @ {}: {}".format(run.step, " ".join(f"{k}={v:.4f}" for k, v in result.items()))
        )


def _postfix(record: dict[str, Any]) -> dict[str, str]:
    shown = {"loss": f"{record['loss']:.3f}", "mlm_acc": f"{record['mlm_acc']:.3f}"}
    if "nsp_acc" in record:
        shown["nsp_acc"] = f"{record['nsp_acc']:.3f}"
    shown["tok/s"] = f"{record['tokens_per_s']:.0f}"
    shown["lr"] = f"{record['lr']:.2e}"
    return shown
