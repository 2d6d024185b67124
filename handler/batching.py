"""Iteration-level (continuous) batching: sequences join and leave the running batch between decode steps.

The running batch is TGI's causal-LM batch over transformers' own ``DynamicCache``: every row's keys
and values are left-padded to one length, so one forward pass decodes every row, each with its own
adapter (peft's ``adapter_names``), sampling parameters, seed, stop strings and token limit. New
sequences are prefilled together and merged in (the shorter side padded on the left); finished rows
are dropped at once and the padding no row needs any more is trimmed, so the cache holds only what
running rows use.

This module is the decode loop's arithmetic only: the scheduler (admission, threads, streaming to
clients) drives it one :meth:`Engine.step` at a time.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from .decode import CompiledDecoder, base_model
from .pipelines.base import cut_at_stop
from .requests import GenerationParams
from .results import GenerationResult, Token, next_piece, tokens_of

log = logging.getLogger(__name__)

BASE = "__base__"


@dataclass(eq=False)
class Sequence:
    """One prompt being generated: what it asked for and what it has produced so far."""

    prompt_ids: list[int]
    params: GenerationParams
    adapter: str = ""
    stops: tuple[str, ...] = ()
    key: object = None
    """The caller's handle (the request it belongs to)."""
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    """The decoded text so far, cut at a stop string once one appears."""
    pieces: list[str] = field(default_factory=list)
    """Each token's text: together the decoded text before any stop-string cut. A token that ends inside
    a character (a byte-fallback piece) has ``""``, and the token that completes it carries the character."""
    logprobs: list[float] = field(default_factory=list)
    """Each token's log-probability under the model's distribution (raw logits, before sampling settings)."""
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    """Per step, the ``params.top_n_tokens`` most likely (token, log-probability) pairs."""
    eos: tuple[int, float] | None = None
    """The end-of-sequence token that finished it, with its log-probability (not part of ``tokens``)."""
    prefill: list[tuple[int, float | None, int | None, list[tuple[int, float]]]] | None = None
    """With ``params.decoder_input_details``: each prompt token, its log-probability, its rank and the
    ``params.prompt_top_n`` most likely tokens (``prompt_logprobs``; None, None, [] for the first)."""
    finish_reason: str | None = None
    """None while running; then eos | stop | length | time | cancelled | error."""
    error: BaseException | None = None
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    rng: torch.Generator | None = None
    batch_size: int = 0
    """The most rows it shared a decode step with (itself included)."""

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


@dataclass
class Batch:
    """Rows decoding together: a cache left-padded to one length, its mask, and each row's next token."""

    rows: list[Sequence]
    cache: DynamicCache | None
    mask: torch.Tensor
    """[rows, length]: 1 where the cache holds a real token."""
    next_ids: torch.Tensor
    """[rows]: the token each row feeds to the next step."""
    decoder: CompiledDecoder | None = None
    """Set while a one-row batch's cache lives in the engine's compiled decoder (``cache`` is then stale)."""

    def __len__(self) -> int:
        return len(self.rows)

    def dynamic_cache(self) -> DynamicCache:
        """The batch's cache as a ``DynamicCache`` (copied out of the compiled decoder if it is there)."""
        return self.decoder.export(self.mask.shape[1]) if self.decoder is not None else self.cache


def _left_pad(t: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - t.shape[dim]
    if missing == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim % t.dim()) + [missing, 0]
    return F.pad(t, pad)


def merge(a: Batch, b: Batch) -> Batch:
    """One batch of both (a's rows first); the shorter cache is padded on the left."""
    length = max(a.mask.shape[1], b.mask.shape[1])
    layers = []
    for la, lb in zip(a.dynamic_cache().layers, b.dynamic_cache().layers, strict=True):
        keys = torch.cat([_left_pad(la.keys, length, -2), _left_pad(lb.keys, length, -2)])
        values = torch.cat([_left_pad(la.values, length, -2), _left_pad(lb.values, length, -2)])
        layers.append((keys, values))
    mask = torch.cat([_left_pad(a.mask, length, 1), _left_pad(b.mask, length, 1)])
    return Batch(a.rows + b.rows, DynamicCache(layers), mask, torch.cat([a.next_ids, b.next_ids]))


def keep(batch: Batch, rows: list[int]) -> Batch | None:
    """Only ``rows`` (indices) of the batch; padding no remaining row needs is trimmed. None if empty."""
    if not rows:
        return None
    if len(rows) == len(batch):
        return batch  # every row stays; no padding column can have become free
    index = torch.tensor(rows, device=batch.mask.device)
    mask = batch.mask[index]
    trim = int((mask.cumsum(1) == 0).sum(1).min())  # leading columns that are padding in every row
    cache = batch.dynamic_cache()
    layers = [(layer.keys[index, :, trim:], layer.values[index, :, trim:]) for layer in cache.layers]
    return Batch([batch.rows[i] for i in rows], DynamicCache(layers), mask[:, trim:], batch.next_ids[index])


class Engine:
    """Prefill, decode one step, and finish rows, for one model and tokenizer."""

    def __init__(
        self,
        tokenizer,
        device,
        eos_ids: set[int],
        stop_sequences: tuple[str, ...] = (),
        decode: str = "eager",
        decode_tokens: int = 512,
        lora_rank: int = 0,
        lora_targets: tuple[str, ...] = (),
    ):
        self.tokenizer = tokenizer
        self.device = device
        self.eos_ids = set(eos_ids)
        self.stop_sequences = tuple(stop_sequences)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(self.eos_ids))
        self.decode = decode
        """eager, or compiled: one-row steps of the base model go through a :class:`CompiledDecoder`."""
        self.decode_tokens = decode_tokens
        """The compiled decoder's static cache length: a longer row decodes eagerly from there on."""
        self.lora_rank = lora_rank
        """The compiled step's adapter slot rank (``option.max_lora_rank``); 0: adapter rows decode eagerly."""
        self.lora_targets = lora_targets
        """The modules with an adapter slot (name suffixes); empty: every linear layer but the output head."""
        self.decoder: CompiledDecoder | None = None

    def new_sequence(self, prompt_ids: list[int], params: GenerationParams, adapter: str = "", key=None) -> Sequence:
        rng = None
        if params.do_sample:
            rng = torch.Generator(device=self.device)
            rng.manual_seed(params.seed if params.seed is not None else int(torch.seed() % 2**63))
        return Sequence(prompt_ids, params, adapter, self.stop_sequences + params.stop, key, rng=rng)

    @torch.inference_mode()
    def prefill(self, model, seqs: list[Sequence]) -> Batch | None:
        """Run the prompts of ``seqs`` as one left-padded batch and pick each one's first token."""
        length = max(len(s.prompt_ids) for s in seqs)
        ids = torch.full((len(seqs), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), length), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, length - len(s.prompt_ids) :] = torch.tensor(s.prompt_ids)
            mask[i, length - len(s.prompt_ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = DynamicCache()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        scored = [i for i, s in enumerate(seqs) if s.params.decoder_input_details]
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=0 if scored else 1,  # 0: every position, for the prompt's log-probabilities
            **self._adapters(model, seqs),
        )
        for i in scored:
            seqs[i].prefill = prompt_logprobs(
                out.logits[i], ids[i], len(seqs[i].prompt_ids), seqs[i].params.prompt_top_n
            )
        batch = Batch(list(seqs), out.cache, mask, torch.zeros(len(seqs), dtype=torch.long))
        return self._advance(batch, out.logits[:, -1, :])

    @torch.inference_mode()
    def step(self, model, batch: Batch) -> Batch | None:
        """One decode step for every row; returns the batch without the rows that finished."""
        length = batch.mask.shape[1]
        mask = torch.cat([batch.mask, torch.ones((len(batch), 1), dtype=batch.mask.dtype, device=batch.mask.device)], 1)
        decoder = self._compiled(model, batch)
        if decoder is not None:
            if batch.decoder is None:
                decoder.load(batch.cache, length)
                batch.decoder = decoder
            try:
                logits = decoder.step(batch.next_ids, length)
            except Exception as exc:  # e.g. a guard that no longer holds: this engine goes on eagerly
                decoder.fail(exc)
            else:
                return self._advance(Batch(batch.rows, None, mask, batch.next_ids, decoder), logits)
        positions = (mask.sum(1, keepdim=True) - 1).to(torch.long)
        out = model(
            input_ids=batch.next_ids[:, None],
            attention_mask=mask,
            position_ids=positions,
            cache=batch.dynamic_cache(),
            use_cache=True,
            **self._adapters(model, batch.rows),
        )
        batch = Batch(batch.rows, out.cache, mask, batch.next_ids)
        return self._advance(batch, out.logits[:, -1, :])

    def prepare(self, model, background: bool = True) -> CompiledDecoder | None:
        """Compile the one-row step for ``model``'s base (on a background thread, or now) if this engine
        decodes compiled; return the decoder. On CPU the step runs on a twin of the base that peft never
        wraps, so it serves a base that peft has wrapped too (with adapter slots if ``lora_rank``)."""
        if self.decode == "compiled" and self.decoder is None:
            base = base_model(model)
            if base is not model and self.device.type != "cpu":
                return None  # there the step would run the served model itself, which peft has wrapped
            try:
                self.decoder = CompiledDecoder(
                    base, self.decode_tokens, self.device, background, self.lora_rank, self.lora_targets
                )
            except Exception as exc:  # e.g. a model the twin cannot be built from: decode eagerly
                log.warning("no compiled decode step for this model; decoding stays eager: %s", exc)
                self.decode = "eager"
                return None
            if not background:
                self.decoder.warm_up()
        return self.decoder

    def _compiled(self, model, batch: Batch) -> CompiledDecoder | None:
        """The compiled decoder, if this step can take it: one row without padding, on the base or an adapter
        that fits the decoder's slots, once the decoder has compiled, with room left in its cache. The first
        such step starts compiling in the background."""
        if len(batch) != 1:
            return None
        decoder = self.prepare(model)
        if decoder is None or not decoder.fits(batch.mask.shape[1]) or not decoder.serves(model):
            return None
        if batch.decoder is None and not (bool(batch.mask.all()) and decoder.take(model, batch.rows[0].adapter)):
            return None
        return decoder

    def _adapters(self, model, seqs: list[Sequence]) -> dict:
        # Always name them under peft: without adapter_names, peft applies its active adapter to base rows.
        if hasattr(model, "peft_config"):
            return {"adapter_names": [s.adapter or BASE for s in seqs]}
        return {}

    def _advance(self, batch: Batch, logits: torch.Tensor) -> Batch | None:
        """Choose each row's next token, record it, and drop the rows that are done."""
        now = time.perf_counter()
        logits = logits.float()
        logp = torch.log_softmax(logits, -1)
        picked = []
        for i, seq in enumerate(batch.rows):
            token = self._choose(seq, logits[i : i + 1].clone())
            picked.append(token)
            seq.first_token_at = seq.first_token_at or now
            seq.batch_size = max(seq.batch_size, len(batch.rows))
            if seq.params.top_n_tokens:
                values, ids = logp[i].topk(seq.params.top_n_tokens)
                seq.top.append(list(zip(ids.tolist(), values.tolist())))
            self._record(seq, token, float(logp[i, token]))
        batch.next_ids = torch.tensor(picked, dtype=torch.long, device=batch.mask.device)
        return keep(batch, [i for i, s in enumerate(batch.rows) if not s.done])

    def _choose(self, seq: Sequence, scores: torch.Tensor) -> int:
        p = seq.params
        if len(seq.tokens) < p.min_new_tokens:
            scores[:, list(self.eos_ids)] = -float("inf")
        if p.repetition_penalty != 1.0:
            ids = torch.tensor([seq.prompt_ids + seq.tokens], device=scores.device)
            scores = RepetitionPenaltyLogitsProcessor(p.repetition_penalty)(ids, scores)
        if not p.do_sample:
            return int(scores.argmax(-1))
        for warper in (
            TemperatureLogitsWarper(p.temperature) if p.temperature != 1.0 else None,
            TopKLogitsWarper(p.top_k) if p.top_k else None,
            TopPLogitsWarper(p.top_p) if p.top_p < 1.0 else None,
        ):
            if warper is not None:
                scores = warper(None, scores)
        probs = torch.softmax(scores, -1)
        return int(torch.multinomial(probs, 1, generator=seq.rng))

    def _record(self, seq: Sequence, token: int, logprob: float) -> None:
        if token in self.eos_ids and len(seq.tokens) >= seq.params.min_new_tokens:
            seq.eos = (token, logprob)
            seq.finish_reason = "eos"
            return
        seq.tokens.append(token)
        seq.logprobs.append(logprob)
        full = self.tokenizer.decode(seq.tokens, skip_special_tokens=False)
        seq.pieces.append(next_piece(full, sum(map(len, seq.pieces))))
        text, stopped = cut_at_stop(full, seq.stops)
        seq.text = text
        # With min_new_tokens the caller wants a fixed length: a stop string then only cuts the text (as
        # in Generator.generate), and the reason says it was cut.
        if stopped and not seq.params.min_new_tokens:
            seq.finish_reason = "stop"
        elif len(seq.tokens) >= seq.params.max_new_tokens:
            seq.finish_reason = "stop" if stopped else "length"


def prompt_logprobs(
    logits: torch.Tensor, ids: torch.Tensor, length: int, top_n: int = 0
) -> list[tuple[int, float | None, int | None, list[tuple[int, float]]]]:
    """Each of the last ``length`` tokens of ``ids`` with its log-probability given the ones before it
    (``logits``: [positions, vocab] of the same row), its rank among the vocabulary (1 for the most likely)
    and the ``top_n`` most likely tokens there with theirs; the first token has none of these."""
    ids, logits = ids[-length:], logits[-length:].float()
    logp = torch.log_softmax(logits[:-1], -1)
    chosen = logp.gather(1, ids[1:, None])
    scores = chosen[:, 0].tolist()
    ranks = ((logp > chosen).sum(-1) + 1).tolist()
    tops: list[list[tuple[int, float]]] = [[] for _ in scores]
    if top_n and scores:
        values, top_ids = logp.topk(top_n, -1)
        tops = [list(zip(i.tolist(), v.tolist())) for i, v in zip(top_ids, values)]
    first = (int(ids[0]), None, None, [])
    return [first] + list(zip(ids[1:].tolist(), scores, ranks, tops))


def result_of(seq: Sequence, tokenizer, with_tokens: bool = False) -> GenerationResult:
    """A finished sequence as generation's result (``with_tokens``: its tokens and log-probabilities too)."""
    ids, logprobs = list(seq.tokens), list(seq.logprobs)
    if seq.eos is not None:
        ids.append(seq.eos[0])
        logprobs.append(seq.eos[1])
    res = GenerationResult(
        text=seq.text,
        generated_tokens=len(ids),
        finish_reason=seq.finish_reason,
        prompt_tokens=len(seq.prompt_ids),
        seconds=time.perf_counter() - seq.started,
    )
    if with_tokens:
        cut = sum(len(p) for p in seq.pieces) - len(seq.text)
        eos = {seq.eos[0]} if seq.eos else set()
        res.tokens = tokens_of(ids, seq.pieces, logprobs, cut, eos)
        if seq.top:
            res.top_tokens = [[Token(i, tokenizer.decode([i]), lp) for i, lp in step] for step in seq.top]
        if seq.prefill is not None:
            res.prefill, res.prompt_top = prefill_tokens(seq.prefill, tokenizer)
    return res


def prefill_tokens(prefill, tokenizer) -> tuple[list[Token], list[list[Token]]]:
    """:func:`prompt_logprobs`'s rows as the prompt's tokens (with their ranks) and, per position, the most
    likely tokens there."""
    tokens = [Token(i, tokenizer.decode([i]), lp, rank=rank) for i, lp, rank, _ in prefill]
    tops = [[Token(i, tokenizer.decode([i]), lp) for i, lp in top] for *_, top in prefill]
    return tokens, tops
