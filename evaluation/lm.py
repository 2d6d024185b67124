"""lm-eval model types that answer the way the served handler does.

The project's tasks (``evaluation/tasks/``) hand a model the raw *instruction* (and the context,
if any, as a system message) and let the model's ``apply_chat_template`` turn it into a prompt,
exactly as a served request reaches the handler as ``inputs`` and the handler's pipeline applies
the instruction template. So one task works for both model types registered here:

``loraship``
    In process. ``apply_chat_template`` is ``handler.pipelines.instruction.format_prompt``;
    generation is the handler's own ``Generator`` (left-padded batches, the pipeline's stop
    markers ``### End`` / ``### Instruction:``, EOS) followed by the pipeline's
    ``encode_response``. Log-likelihoods are teacher-forced on the same prompt. Several
    ``LocalLM`` views share one :class:`LocalModel` (base weights plus every adapter); the base
    model is peft's ``adapter_names=["__base__"]`` when generating (the server's path) and
    ``disable_adapter()`` when scoring log-likelihoods.

``loraship-endpoint``
    Over HTTP against a running ``loraship serve`` (or a SageMaker-style ``/invocations``):
    ``apply_chat_template`` returns the instruction unchanged, and the server templates it.
    Log-likelihoods come from the server's prompt log-probabilities (a chat request that continues
    the reference answer, with ``prompt_logprobs``), so the same tasks run against it.

Both return answers as :class:`Completion` (a ``str`` that also carries ``finish_reason``), which
is how the generation task counts the answers that stopped by themselves; in-process
log-likelihoods come back as :class:`LogLikelihood` (lm-eval's ``(logprob, is_greedy)`` pair that
also carries the continuation's token count, for a per-token loss).

Importing this module registers both, so lm-eval's Python API finds them by name::

    import evaluation.lm, lm_eval
    from lm_eval.tasks import TaskManager
    tm = TaskManager(include_path="evaluation/tasks", include_defaults=False, metadata={"docs": "docs.jsonl"})
    lm_eval.simple_evaluate(model="loraship", model_args={"model": "default", "adapter": "runs/x"},
                            tasks=["loraship_generation"], task_manager=tm, apply_chat_template=True)
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from pathlib import Path

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from loraship.core.errors import LorashipError

BASE = "__base__"
#: LMI's finish reasons (what the server reports) as the in-process model types name them.
LMI_FINISH_REASONS = {"eos_token": "eos", "stop_sequence": "stop", "length": "length"}
DEFAULT_MAX_NEW_TOKENS = 128


class EvalError(LorashipError):
    """Scoring cannot go on: bad data, an adapter that does not load, an endpoint that refuses."""


class Completion(str):
    """A generated answer that also says why it ended: ``eos``, ``stop`` (### End) or ``length``."""

    finish_reason: str | None
    generated_tokens: int | None

    def __new__(cls, text: str, finish_reason: str | None = None, generated_tokens: int | None = None):
        obj = super().__new__(cls, text)
        obj.finish_reason = finish_reason
        obj.generated_tokens = generated_tokens
        return obj


class LogLikelihood(tuple):
    """lm-eval's ``(logprob, is_greedy)`` pair, plus ``tokens``: how many tokens were scored."""

    tokens: int

    def __new__(cls, logprob: float, is_greedy: bool, tokens: int):
        obj = super().__new__(cls, (logprob, is_greedy))
        obj.tokens = tokens
        return obj


def _split_chat(chat_history: list[dict]) -> tuple[str, str]:
    """(instruction, context) from lm-eval's single-turn chat: optional system message, one user turn."""
    system = "\n\n".join(m["content"] for m in chat_history if m["role"] == "system" and m["content"])
    users = [m["content"] for m in chat_history if m["role"] == "user"]
    if len(users) != 1 or any(m["role"] not in ("system", "user") for m in chat_history):
        raise EvalError(
            "the instruction template takes one instruction (and an optional context); "
            f"got roles {[m['role'] for m in chat_history]}: use zero-shot tasks without gen_prefix"
        )
    return users[0], system


def _gen_settings(gen_kwargs: dict) -> dict:
    """The generation settings of a request, with lm-eval's names (``until``, ``max_gen_toks``)."""
    kwargs = dict(gen_kwargs)
    until = kwargs.pop("until", None) or []
    until = [until] if isinstance(until, str) else list(until)
    settings = {
        "until": until,
        "max_new_tokens": int(kwargs.pop("max_gen_toks", DEFAULT_MAX_NEW_TOKENS)),
        "do_sample": bool(kwargs.pop("do_sample", False)),
    }
    for key in ("temperature", "top_p", "top_k", "seed"):
        if key in kwargs:
            settings[key] = kwargs.pop(key)
    if settings.get("temperature") == 0:
        settings["do_sample"] = False
    if kwargs:
        raise EvalError(f"unsupported generation settings: {', '.join(sorted(kwargs))}")
    return settings


# ---- in process -----------------------------------------------------------------------------


class LocalModel:
    """A base model and any number of LoRA adapters, loaded once in this process.

    Adapters that carry their own tokenizer (special tokens) are refused: the base and the
    adapter would then read different token ids for the same prompt, so they would not be scored
    on identical inputs. Score such adapters through ``--endpoint``.
    """

    def __init__(
        self,
        model: str = "default",
        adapters: dict[str, str | Path] | None = None,
        *,
        device: str | None = None,
        dtype: str = "auto",
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from loraship.core.models import resolve_model
        from loraship.handler.generation import Generator, pick_dtype, prepare_tokenizer
        from loraship.handler.pipelines import get_pipeline

        self.model_path = resolve_model(model)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        prepare_tokenizer(self.tokenizer)
        base = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=pick_dtype(dtype, self.device))
        base.to(self.device).eval()
        self.model = base
        self.adapters: dict[str, str] = {}
        for name, src in (adapters or {}).items():
            self._add_adapter(name, Path(src))
        self.pipeline = get_pipeline("instruction")()
        self.pipeline.setup(self.tokenizer, {})
        self.generator = Generator(self.model, self.tokenizer, self.device, self.pipeline.stop_sequences)

    def _add_adapter(self, name: str, src: Path) -> None:
        from peft import PeftModel

        if not src.joinpath("adapter_config.json").is_file():
            raise EvalError(f"adapter {name!r}: {src} has no adapter_config.json")
        if any(src.joinpath(f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            raise EvalError(
                f"adapter {name!r} ({src}) carries its own tokenizer (added special tokens); the base "
                "model cannot be scored on the same token ids in process: score it with --endpoint"
            )
        try:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(src), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(src), adapter_name=name)
        except (ValueError, KeyError, RuntimeError, OSError) as exc:
            raise EvalError(f"adapter {name!r} from {src} does not load onto {self.model_path}: {exc}") from None
        self.model.eval()
        self.adapters[name] = str(src)

    @contextlib.contextmanager
    def variant(self, adapter: str | None):
        """Run the body with one adapter active, or with none (the base model) for ``None``."""
        from peft import PeftModel

        if adapter is None or adapter == BASE:
            with self.model.disable_adapter() if isinstance(self.model, PeftModel) else contextlib.nullcontext():
                yield
            return
        if adapter not in self.adapters:
            raise EvalError(f"unknown adapter {adapter!r}; loaded: {', '.join(self.adapters) or 'none'}")
        self.model.set_adapter(adapter)
        yield

    @property
    def limit(self) -> int:
        return self.generator.limit


@register_model("loraship")
class LocalLM(LM):
    """The base model or one adapter of a :class:`LocalModel`, scored in process."""

    def __init__(
        self,
        model: str = "default",
        adapter: str | None = None,
        *,
        loaded: LocalModel | None = None,
        variant: str | None = None,
        batch_size: int | str | None = 8,
        device: str | None = None,
        dtype: str = "auto",
        **_lm_eval_extras,
    ):
        super().__init__()
        if loaded is None:  # built by lm-eval from --model_args model=...,adapter=DIR
            adapters = {"adapter": adapter} if adapter else {}
            loaded = LocalModel(model, adapters, device=device, dtype=dtype)
            variant = "adapter" if adapter else None
        self.loaded = loaded
        self.variant = None if variant in (None, BASE) else variant
        self.batch_size = int(batch_size) if str(batch_size).isdigit() and int(batch_size) > 0 else 8
        self._device = loaded.device

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def tokenizer_name(self) -> str:
        return "loraship-instruction-" + Path(self.loaded.model_path).name

    def chat_template(self, chat_template=False) -> str:
        return "loraship.handler.pipelines.instruction.format_prompt"

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        from loraship.handler.pipelines.instruction import format_prompt

        instruction, context = _split_chat(chat_history)
        return format_prompt(instruction, context or None)

    # -- generation ------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[Completion]:
        from loraship.handler.errors import BadRequest
        from loraship.handler.requests import GenerationParams

        out: list[Completion] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            groups: dict[str, list[int]] = {}
            for i, req in enumerate(chunk):
                groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
            results: list[Completion | None] = [None] * len(chunk)
            for members in groups.values():
                s = _gen_settings(chunk[members[0]].args[1])
                params = GenerationParams(
                    max_new_tokens=s["max_new_tokens"],
                    do_sample=s["do_sample"],
                    temperature=float(s.get("temperature", 1.0)),
                    top_p=float(s.get("top_p", 1.0)),
                    top_k=int(s.get("top_k", 0)),
                    seed=s.get("seed"),
                    stop=tuple(s["until"]),
                )
                prompts = [chunk[i].args[0] for i in members]
                try:
                    for p in prompts:
                        self.loaded.generator.check_length(p, params)
                except BadRequest as exc:
                    raise EvalError(str(exc)) from None
                # The server's path: peft's mixed-batch adapter_names, "__base__" for the base model.
                generated = self.loaded.generator.generate(
                    prompts, params, adapter_names=[self.variant or BASE] * len(prompts)
                )
                for i, res in zip(members, generated):
                    results[i] = Completion(
                        self.loaded.pipeline.encode_response(res.text), res.finish_reason, res.generated_tokens
                    )
            out.extend(results)
        return out

    # -- log-likelihoods -------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[LogLikelihood]:
        """Teacher-forced log-probability of each continuation after its context.

        The context is tokenised with the tokenizer's special tokens and the continuation without,
        separately (the training recipe's rule): the scored ids are exactly the prompt the server
        feeds the model followed by the reference answer's own tokens.
        """
        return self._loglikelihood_pairs([(req.args[0], req.args[1]) for req in requests])

    def _loglikelihood_pairs(self, texts: list[tuple[str, str]]) -> list[LogLikelihood]:
        tok = self.tokenizer
        pairs = []
        for context, continuation in texts:
            ctx = tok(context, add_special_tokens=True)["input_ids"] if context else []
            if not ctx:
                ctx = [tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]
            cont = tok(continuation, add_special_tokens=False)["input_ids"]
            if not cont:
                raise EvalError(f"empty continuation to score after {context[-80:]!r}")
            if len(ctx) + len(cont) > self.loaded.limit:
                raise EvalError(
                    f"prompt + reference are {len(ctx) + len(cont)} tokens, over the model's "
                    f"limit of {self.loaded.limit}"
                )
            pairs.append((ctx, cont))
        out = []
        for start in range(0, len(pairs), self.batch_size):
            out.extend(self._score(pairs[start : start + self.batch_size]))
        return out

    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[LogLikelihood]:
        import torch

        width = max(len(c) + len(x) for c, x in pairs)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(pairs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(pairs), width), dtype=torch.long)
        for i, (ctx, cont) in enumerate(pairs):
            seq = ctx + cont
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
        with torch.inference_mode(), self.loaded.variant(self.variant):
            logits = self.loaded.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
        results = []
        for i, (ctx, cont) in enumerate(pairs):
            # logits at position t predict token t + 1
            rows = logits[i, len(ctx) - 1 : len(ctx) + len(cont) - 1].float()
            logprobs = torch.log_softmax(rows, dim=-1)
            target = torch.tensor(cont, device=logprobs.device)
            ll = logprobs.gather(1, target[:, None]).sum().item()
            greedy = bool((logprobs.argmax(dim=-1) == target).all())
            results.append(LogLikelihood(ll, greedy, len(cont)))
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-probability of each whole string after the BOS (or EOS) token, in one window."""
        return [ll[0] for ll in self._loglikelihood_pairs([("", req.args[0]) for req in requests])]


# ---- over HTTP -------------------------------------------------------------------------------


@register_model("loraship-endpoint")
class EndpointLM(LM):
    """The base model (``adapter=__base__``) or one adapter of a running server, over HTTP.

    A generation is one ``POST /invocations`` with the raw instruction, the adapter's name and
    ``details: true``; the answer and its ``finish_reason`` come from the reply. A log-likelihood is
    two chat requests on the same route: the instruction alone, and the instruction with the
    reference as the assistant's answer to continue (``continue_final_message``), both with
    ``prompt_logprobs``: the reference's tokens are those after the first request's prompt, and
    their log-probabilities are the server's own. ``concurrency`` requests are in flight at once
    (a greedy answer does not depend on what it is batched with; the tests check it).
    """

    def __init__(
        self, url: str, adapter: str = BASE, *, timeout: float = 300.0, concurrency: int = 1, **_lm_eval_extras
    ):
        super().__init__()
        url = url.rstrip("/")
        self.url = url if url.endswith("/invocations") or "/predictions/" in url else url + "/invocations"
        self.adapter = adapter or BASE
        self.timeout = float(timeout)
        self.concurrency = max(1, int(concurrency))

    def _map(self, fn, items: list) -> list:
        """``fn`` over ``items`` with ``concurrency`` requests in flight, results in order."""
        if self.concurrency == 1 or len(items) < 2:
            return [fn(x) for x in items]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(fn, items))

    @property
    def tokenizer_name(self) -> str:
        return "loraship-endpoint"

    def chat_template(self, chat_template=False) -> str:
        return "applied by the server's pipeline"

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        instruction, context = _split_chat(chat_history)
        if context:
            raise EvalError(
                "the served instruction pipeline takes only an instruction (no context/Input: block); "
                "score documents with a context in process"
            )
        return instruction

    def body(self, instruction: str, gen_kwargs: dict) -> dict:
        s = _gen_settings(gen_kwargs)
        params = {"max_new_tokens": s["max_new_tokens"], "details": True}
        if s["until"]:
            params["stop"] = s["until"]
        if s["do_sample"]:
            params["do_sample"] = True
            params.update({k: s[k] for k in ("temperature", "top_p", "top_k", "seed") if k in s})
        return {"inputs": instruction, "parameters": params, "adapters": self.adapter}

    def post(self, body: dict) -> dict:
        data = json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.url, data=data, headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                reply = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            raise EvalError(f"{self.url} answered HTTP {exc.code} for adapter {self.adapter!r}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise EvalError(f"cannot reach {self.url}: {exc}") from None
        except ValueError as exc:
            raise EvalError(f"{self.url} answered with something that is not JSON: {exc}") from None
        if not isinstance(reply, dict) or ("generated_text" not in reply and "choices" not in reply):
            raise EvalError(f"{self.url} answered without generated_text: {str(reply)[:300]}")
        return reply

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[Completion]:
        def one(args) -> Completion:
            reply = self.post(self.body(args[0], args[1]))
            details = reply.get("details") or {}
            reason = LMI_FINISH_REASONS.get(details.get("finish_reason"), details.get("finish_reason"))
            return Completion(reply["generated_text"], reason, details.get("generated_tokens"))

        return self._map(one, [req.args for req in requests])

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[LogLikelihood]:
        return self._map(self._loglikelihood, [req.args for req in requests])

    def _loglikelihood(self, pair: tuple[str, str]) -> LogLikelihood:
        instruction, reference = pair
        asked = [{"role": "user", "content": instruction}]
        answered = asked + [{"role": "assistant", "content": reference}]
        score = {"model": self.adapter, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 0}
        prompt = self._prompt_logprobs({"messages": asked, **score})
        both = self._prompt_logprobs(
            {"messages": answered, "continue_final_message": True, "add_generation_prompt": False, **score}
        )
        if [_token_id(e) for e in both[: len(prompt)]] != [_token_id(e) for e in prompt]:
            raise EvalError(
                f"{self.url} tokenized the prompt differently once the reference followed it: the reference's "
                "tokens cannot be told apart; score this model in process"
            )
        tail = both[len(prompt) :]
        if not tail:
            raise EvalError(f"empty reference to score after {instruction[-80:]!r}")
        chosen = [entry[str(_token_id(entry))] for entry in tail]
        return LogLikelihood(sum(c["logprob"] for c in chosen), all(c.get("rank") == 1 for c in chosen), len(tail))

    def _prompt_logprobs(self, body: dict) -> list:
        reply = self.post(body)
        logprobs = reply.get("prompt_logprobs")
        if not isinstance(logprobs, list) or len(logprobs) < 2:
            raise EvalError(f"{self.url} answered without prompt_logprobs: {str(reply)[:300]}")
        return logprobs

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("rolling log-likelihoods need a tokenizer here; score them in process")


def _token_id(entry) -> int | None:
    """The prompt token of one ``prompt_logprobs`` entry (vLLM's shape ``{"<id>": {"logprob", "rank", ...}}``;
    asked for with ``prompt_logprobs: 0`` it holds the prompt's own token only); None for the first token."""
    if entry is None:
        return None
    return int(next(iter(entry)))
