"""The GPT-4-style judge of winrate.py: the paper's Appendix C.2 prompts, a strict parser of the
answer, and the client for any OpenAI-compatible chat-completions endpoint (standard library only:
retries with back-off on 429, 5xx and connection errors, a concurrency limit, and an on-disk cache
of every judgment, so a rerun asks nothing twice and a killed run resumes).

    judge.openai_judge(comparisons, "gpt-4-0314", "dialogue", cfg, "runs/winrate/judge_cache.jsonl")

OPENAI_BASE_URL (default https://api.openai.com/v1) and OPENAI_API_KEY come from the environment.
"""

import hashlib
import http.client
import json
import os
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed

from plumbing.utils import append_jsonl, read_jsonl

# ----------------------------------------------------------------------------- the judge prompts
# Appendix C.2 of the paper (gpt-4-0314 judged every comparison; "the order of summaries or
# responses are randomly chosen for every evaluation"). The wording was checked against copies of
# the appendix (HackerNoon's republication of the paper, a translation, and reproductions that
# quote it), not the arXiv PDF itself; the paper's verbatim boxes wrap long lines with "\", joined
# here, and their blank lines are not certain. The paper's main TL;DR results use the concise
# prompt (C); (S) is the simple one of its human-agreement study (§6.4).
_SUMMARY_TAIL = """

Post:
{query}

Summary A:
{a}

Summary B:
{b}

FIRST provide a one-sentence comparison of the two summaries, explaining which you prefer and \
why. SECOND, on a new line, state only "A" or "B" to indicate your choice. Your response should \
use the format:
Comparison: <one-sentence comparison and explanation>
Preferred: <"A" or "B">"""

PROMPTS = {  # task: (template, the line that carries the answer)
    "summarization": ("Which of the following summaries does a better job of summarizing the most "
                      "important points in the given forum post, without including unimportant "
                      "or irrelevant details? A good summary is both precise and concise."
                      + _SUMMARY_TAIL, "Preferred:"),
    "summarization_simple": ("Which of the following summaries does a better job of summarizing "
                             "the most important points in the given forum post?" + _SUMMARY_TAIL,
                             "Preferred:"),
    "dialogue": ("""For the following query to a chatbot, which response is more helpful?

Query: {query}

Response A:
{a}

Response B:
{b}

FIRST provide a one-sentence comparison of the two responses and explain which you feel is more \
helpful. SECOND, on a new line, state only "A" or "B" to indicate which response is more helpful. \
Your response should use the format:
Comparison: <one-sentence comparison and explanation>
More helpful: <"A" or "B">""", "More helpful:"),
}


def judge_message(task: str, query: str, a: str, b: str) -> str:
    if task.startswith("summarization"):  # the judge reads the post, not our "TL;DR:" cue
        query = query.rstrip().removesuffix("TL;DR:").rstrip()
    return PROMPTS[task][0].format(query=query, a=a, b=b)


def parse_judgment(task: str, answer: str) -> str | None:
    """"A" or "B" from a judge's answer, or None: exactly one line must start with the task's key
    ("Preferred:" / "More helpful:") and hold A or B alone (quotes, stars, a full stop allowed).
    Anything else is a failure, never a guess."""
    key = PROMPTS[task][1].lower()
    lines = [ln.strip().strip("*").strip() for ln in answer.splitlines()]
    found = [ln[len(key):] for ln in lines if ln.lower().startswith(key)]
    if len(found) != 1:
        return None
    choice = found[0].strip().strip("*\"'<>. ").strip()
    return choice if choice in ("A", "B") else None


# ----------------------------------------------------------------------------- the openai judge


def chat_completion(base_url, api_key, body, timeout, retries, delay, stop=None) -> str:
    """The assistant's text for one chat-completions request. 429, 5xx, timeouts and connection
    errors are retried `retries` times, waiting delay, 2 delay, 4 delay, ...; other HTTP errors
    (bad key, unknown model) fail at once. Raises OSError when no answer comes."""
    url = base_url.rstrip("/") + "/chat/completions"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {api_key}"})
    stop, last = stop if stop is not None else threading.Event(), None
    for attempt in range(retries + 1):
        if attempt and stop.wait(delay * 2 ** (attempt - 1)):
            break  # set when another request failed for good, or on Ctrl-C: stop asking
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                reply = json.loads(r.read())
            return reply["choices"][0]["message"]["content"] or ""
        except urllib.error.HTTPError as e:
            if e.code != 429 and e.code != 408 and e.code < 500:
                detail = e.read()[:300].decode(errors="replace")
                raise OSError(f"the judge endpoint {url} refused the request: HTTP {e.code} "
                              f"{detail}") from None
            last = f"HTTP {e.code}"
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:  # refused, reset
            last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
        except (ValueError, KeyError, IndexError, TypeError):  # 200 but not a chat completion
            last = "a reply that is not a chat completion"
    raise OSError(f"the judge endpoint {url} gave no answer after {retries + 1} tries ({last})")


def cache_key(model: str, message: str) -> str:
    return hashlib.sha256(json.dumps([model, message]).encode()).hexdigest()


def openai_judge(comparisons, model, task, cfg, cache_path) -> None:
    """Fill in each comparison's answer, choice and outcome. Every judgment is appended to the
    cache (JSONL, keyed by judge model + the whole message, i.e. the prompt and both responses in
    the order shown) as soon as it arrives, so a killed run resumes; only complete judgments are
    ever written."""
    api_key = os.environ.get("OPENAI_API_KEY")
    base_url = os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
    cache = {r["key"]: r["answer"] for r in read_jsonl(cache_path)}
    todo = {}
    for c in comparisons:
        if c["outcome"] == "tie":  # identical texts: nothing to ask
            continue
        shown = (c["response"], c["reference"])[:: 1 if c["policy_is"] == "A" else -1]
        c["message"] = judge_message(task, c["prompt"], *shown)
        c["key"] = cache_key(model, c["message"])
        if c["key"] not in cache:
            todo[c["key"]] = c["message"]
    body = lambda m: {"model": model, "messages": [{"role": "user", "content": m}],
                      **({"temperature": cfg.judge_temperature}
                         if cfg.judge_temperature is not None else {}),
                      **({"max_tokens": cfg.judge_max_tokens} if cfg.judge_max_tokens else {})}

    def keep(key, answer):
        cache[key] = answer
        append_jsonl(cache_path, dict(key=key, model=model, task=task, answer=answer))

    stop, error = threading.Event(), None
    pool = ThreadPoolExecutor(max(1, cfg.concurrency))
    futures = {pool.submit(chat_completion, base_url, api_key, body(m), cfg.timeout, cfg.retries,
                           cfg.retry_delay, stop): k for k, m in todo.items()}
    try:
        for f in as_completed(futures):
            if f.exception() is not None:
                error = f.exception()
                break
            keep(futures[f], f.result())
    finally:  # an error or Ctrl-C: no new requests; the answers of those under way are kept too
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        for f in futures:
            if f.done() and not f.cancelled() and f.exception() is None and futures[f] not in cache:
                keep(futures[f], f.result())
    if error is not None:
        kept = (f"the {len(cache)} judgments so far are kept in {cache_path} and the same "
                f"command resumes from them" if cache else "no judgment was made")
        raise OSError(f"{error}; {kept}") from None
    for c in comparisons:
        if c["outcome"] == "tie":
            c.update(answer=None, choice=None)
            continue
        c["answer"] = cache[c.pop("key")]
        c.pop("message")
        c["choice"] = parse_judgment(task, c["answer"])
        c["outcome"] = ("failure" if c["choice"] is None else
                        "win" if c["choice"] == c["policy_is"] else "loss")
        c["p_win"] = {"win": 1.0, "loss": 0.0}.get(c["outcome"])
