"""Model loading and batched generation shared by every pipeline."""

from __future__ import annotations

import logging
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .batching import prefill_tokens, prompt_logprobs
from .errors import BadRequest, ConfigError
from .pipelines.base import cut_at_stop
from .properties import ServingOptions
from .requests import GenerationParams
from .results import GenerationResult, Token, token_pieces, tokens_of

log = logging.getLogger(__name__)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is float32 on CPU (bf16 is faster only at large batches there) and bf16/fp16 on GPU."""
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_model(opts: ServingOptions):
    """Load tokenizer and model as the options say; return (model, tokenizer, device)."""
    model_id = opts.resolve(opts.model_id)
    # DJL passes device_id=-1 for a CPU worker; a device_map also asks for accelerators.
    use_cuda = torch.cuda.is_available() and (opts.device_id >= 0 or bool(opts.device_map))
    device = torch.device(f"cuda:{max(opts.device_id, 0)}" if use_cuda else "cpu")
    kwargs = {"dtype": pick_dtype(opts.dtype, device), "trust_remote_code": opts.trust_remote_code}
    if opts.quantize:
        if not torch.cuda.is_available():
            raise ConfigError(f"option.quantize={opts.quantize} needs a CUDA GPU (bitsandbytes); this host has none")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=opts.quantize == "bitsandbytes8", load_in_4bit=opts.quantize == "bitsandbytes4"
        )
        kwargs["device_map"] = opts.device_map or {"": device.index or 0}
    elif opts.device_map:
        kwargs["device_map"] = opts.device_map
    tokenizer = AutoTokenizer.from_pretrained(model_id, trust_remote_code=opts.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(model_id, **kwargs)
    if "device_map" not in kwargs:
        model.to(device)
    model.eval()
    prepare_tokenizer(tokenizer)
    return model, tokenizer, device


def prepare_tokenizer(tokenizer) -> None:
    """Left padding for batched decoding; EOS as pad when the tokenizer has none."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def context_limit(model, tokenizer) -> int:
    limit = getattr(model.config, "max_position_embeddings", None) or 2048
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if tok_limit and tok_limit < 10**6:
        limit = min(limit, tok_limit)
    return int(limit)


class Generator:
    """Runs one left-padded ``generate`` per group of requests with identical parameters."""

    def __init__(self, model, tokenizer, device, stop_sequences: tuple[str, ...] = ()):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.stop_sequences = tuple(stop_sequences)
        self.limit = context_limit(model, tokenizer)
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])

    def check_length(self, prompt: str, params: GenerationParams) -> list[int]:
        ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        if len(ids) + params.max_new_tokens > self.limit:
            raise BadRequest(
                f"prompt has {len(ids)} tokens and max_new_tokens is {params.max_new_tokens}: together "
                f"{len(ids) + params.max_new_tokens}, over the model's limit of {self.limit} tokens",
                field="inputs",
            )
        return ids

    @torch.inference_mode()
    def generate(
        self,
        prompts: list[str],
        params: GenerationParams,
        adapter_names: list[str] | None = None,
        streamer=None,
        tokenizer=None,
        max_time: float | None = None,
        model=None,
        with_tokens: bool = False,
    ) -> list[GenerationResult]:
        """One left-padded ``generate``; ``tokenizer`` is an adapter's own when it added tokens.
        ``max_time`` (seconds) stops it early (transformers' MaxTimeCriteria): rows cut short then
        finish with reason ``time``. ``model`` is what to run when it is not the model the generator
        was built with: the base wrapped by peft once adapters load (the adapter manager owns it).
        ``with_tokens``: also each generated token with its log-probability (and ``top_n_tokens``, and
        the prompt's with ``decoder_input_details``)."""
        start = time.perf_counter()
        model = model if model is not None else self.model
        tokenizer = tokenizer or self.tokenizer
        enc = tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
        stops = self.stop_sequences + params.stop
        kwargs = dict(
            max_new_tokens=params.max_new_tokens,
            do_sample=params.do_sample,
            pad_token_id=tokenizer.pad_token_id,
            repetition_penalty=params.repetition_penalty,
        )
        if params.min_new_tokens:
            kwargs["min_new_tokens"] = params.min_new_tokens
        elif stops:
            # transformers stops each sequence at its first stop string; with min_new_tokens the
            # caller wants a fixed length, so stop strings then only cut the text afterwards.
            kwargs.update(stop_strings=list(stops), tokenizer=tokenizer)
        if params.do_sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
            if params.seed is not None:
                torch.manual_seed(params.seed)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if hasattr(model, "peft_config"):
            # Always name the adapters: without adapter_names peft would apply its active adapter
            # to requests for the base model.
            names = adapter_names or [""] * len(prompts)
            kwargs["adapter_names"] = [name or "__base__" for name in names]
        recorder = _LogprobRecorder(model, params.top_n_tokens) if with_tokens else None
        if streamer is not None or recorder is not None:
            kwargs["streamer"] = _Streamers(streamer, recorder)
        if max_time is not None:
            kwargs["max_time"] = max_time
        try:
            out = model.generate(**enc, **kwargs)
        finally:
            if recorder is not None:
                recorder.close()
        elapsed = time.perf_counter() - start
        prefill = None
        if with_tokens and params.decoder_input_details:
            mask = enc["attention_mask"]
            logits = model(
                input_ids=enc["input_ids"], attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                **({"adapter_names": kwargs["adapter_names"]} if "adapter_names" in kwargs else {}),
            ).logits  # fmt: skip
            prefill = [
                prompt_logprobs(logits[i], enc["input_ids"][i], int(mask[i].sum()), params.prompt_top_n)
                for i in range(len(prompts))
            ]
        timed_out = max_time is not None and elapsed >= max_time
        width = enc["input_ids"].shape[1]
        results = []
        for row, mask in zip(out, enc["attention_mask"]):
            new = row[width:].tolist()
            n = len(new)
            for i, tok in enumerate(new):
                if tok in self.eos_ids:
                    n = i
                    break
            text = tokenizer.decode(new[:n], skip_special_tokens=False)
            text, stopped = cut_at_stop(text, stops)
            if stopped:
                reason = "stop"
            elif n < len(new):
                reason = "eos"
            elif timed_out and n < params.max_new_tokens:
                reason = "time"
            else:
                reason = "length"
            res = GenerationResult(
                text=text,
                generated_tokens=n + (reason == "eos"),
                finish_reason=reason,
                prompt_tokens=int(mask.sum()),
                seconds=elapsed,
            )
            if with_tokens:
                row_i = len(results)
                kept = new[: n + (reason == "eos")]
                logprobs = [float(recorder.logprobs[t][row_i]) for t in range(len(kept))]
                pieces = token_pieces(tokenizer, new[:n])
                res.tokens = tokens_of(kept, pieces, logprobs, sum(map(len, pieces)) - len(text), self.eos_ids)
                if params.top_n_tokens:
                    res.top_tokens = [
                        [Token(i, tokenizer.decode([i]), lp) for i, lp in recorder.top[t][row_i]]
                        for t in range(len(kept))
                    ]
                if prefill is not None:
                    res.prefill, res.prompt_top = prefill_tokens(prefill[row_i], tokenizer)
            results.append(res)
        return results


class _LogprobRecorder:
    """Each step's log-probabilities under the model's own distribution: a hook on the output layer keeps the
    raw logits of the step (``generate``'s scores are already shaped by the sampling settings), and
    ``put`` (``generate``'s streamer call with the tokens it chose) reads the chosen tokens' values."""

    def __init__(self, model, top_n: int = 0):
        self.top_n = top_n
        self.logprobs: list[list[float]] = []
        self.top: list[list[list[tuple[int, float]]]] = []
        self._last = None
        self._prompt_seen = False
        self._hook = model.get_output_embeddings().register_forward_hook(self._on_logits)

    def _on_logits(self, module, args, out):
        self._last = torch.log_softmax(out[:, -1, :].float(), -1)

    def put(self, value):
        if not self._prompt_seen:  # generate's first call hands over the prompt
            self._prompt_seen = True
            return
        ids = value.view(-1).to(self._last.device)
        self.logprobs.append(self._last.gather(1, ids[:, None])[:, 0].tolist())
        if self.top_n:
            values, top = self._last.topk(self.top_n)
            self.top.append([list(zip(i.tolist(), v.tolist())) for i, v in zip(top, values)])

    def end(self):
        pass

    def close(self):
        self._hook.remove()


class _Streamers:
    """``generate`` takes one streamer: this one feeds two (either may be None)."""

    def __init__(self, *streamers):
        self.streamers = [s for s in streamers if s is not None]

    def put(self, value):
        for s in self.streamers:
            s.put(value)

    def end(self):
        for s in self.streamers:
            s.end()
