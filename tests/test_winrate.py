"""winrate.py without the network: the openai judge talks to a local HTTP server started here
(127.0.0.1, a free port, in a thread) that answers chat completions by a rule and counts the
requests; the rm judge and the sampling run on tiny GPTs and a tiny reward model saved in a temp
folder with the synthetic corpus' compact vocabulary.

Checked: the judge prompts, strict parsing, the win-rate and standard-error arithmetic; the A/B
order is random, recorded and undone (a judge that always prefers the reference gives 0, one that
prefers the policy gives 1); retries after 429/5xx; the cache (a rerun asks nothing); an
interrupted run resumes with only the missing requests; a missing key and an unreachable endpoint
are one clear error with nothing half-written; the rm judge's expected win rate is the mean of
sigmoid(r_policy - r_reference) of the reward model itself. The judge's accuracy on held-out pairs
(rm: r(chosen) > r(rejected) by hand; openai: the local endpoint's answers, order undone, failures
counted), kept in judge.json and the plot's caption; a rule as a second judge (dialogue_reward by
hand on comparisons.jsonl, the judge's accuracy against it, a panel of the plot)."""

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from conftest import closed_port, randomize_

from model import GPT, GPTConfig
from reward import RewardModel

from hh_tldr import winrate
from hh_tldr.judge import chat_completion, judge_message, parse_judgment
from hh_tldr.winrate import WinRateConfig
from plumbing.speed import speed_up
from plumbing.utils import read_jsonl, seed_for, write_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = "[reference]"  # in every reference text; no token of the compact vocabulary holds "["
PROMPTS = ["I watched this movie", "The acting was", "My friend told me", "This film came out",
           "I saw this film", "The story is", "Overall, it was", "I rented this movie"]


# ----------------------------------------------------------------------------- the local endpoint


class Judge(ThreadingHTTPServer):
    """A chat-completions endpoint. rule(message) -> answer text; before answering, it returns the
    HTTP codes in `fail` one per request; after `ok_limit` answers it returns 500 for good."""

    daemon_threads = True

    def __init__(self, rule):
        super().__init__(("127.0.0.1", 0), Handler)
        self.rule, self.fail, self.ok_limit = rule, [], None
        self.requests, self.answered, self.bodies = 0, 0, []
        self.lock = threading.Lock()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.requests += 1
            srv.bodies.append(body)
            if self.path != "/v1/chat/completions" or \
                    self.headers.get("Authorization") != "Bearer test-key":
                code = 404 if self.path != "/v1/chat/completions" else 401
            elif srv.fail:
                code = srv.fail.pop(0)
            elif srv.ok_limit is not None and srv.answered >= srv.ok_limit:
                code = 500
            else:
                code = 200
                srv.answered += 1
        if code != 200:
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "nope"}}')
            return
        text = srv.rule(body["messages"][0]["content"])
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(out.encode())


def shown(message):
    """The two responses of a judge message, in the order shown (A, B), and the answer key."""
    m = re.search(r"(Summary|Response) A:\n(.*?)\n\n\1 B:\n(.*?)\n\nFIRST", message, re.S)
    return m.group(2), m.group(3), "Preferred:" if m.group(1) == "Summary" else "More helpful:"


def prefer(reference: bool):
    def rule(message):
        a, b, key = shown(message)
        pick = "A" if (MARK in a) == reference else "B"
        return f"Comparison: one of them is better.\n{key} {pick}"
    return rule


@pytest.fixture
def judge(monkeypatch):
    """judge(rule) -> a running local endpoint, with OPENAI_BASE_URL and OPENAI_API_KEY set."""
    servers = []

    def start(rule):
        srv = Judge(rule)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        return srv

    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(k, raising=False)
    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


# ----------------------------------------------------------------------------- tiny models


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, compact_tok):
    """Two tiny policies and a tiny reward model (compact vocabulary) and two test files of the
    same 8 prompts: a pairs file (reference = chosen) and a completions file."""
    import types

    tok = compact_tok
    assert not any("[" in tok.decode([i]) for i in range(tok.vocab_size))
    root = tmp_path_factory.mktemp("winrate")
    cfg = dict(block_size=64, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32,
               eos_token_id=tok.eos_id)
    folders = {}
    for name, seed in (("sft", 0), ("dpo", 1)):
        torch.manual_seed(seed)
        model = randomize_(GPT(GPTConfig(**cfg)), seed, 0.3)
        folders[name] = str(root / name)
        model.save_pretrained(folders[name])
        tok.save(folders[name])
    torch.manual_seed(2)
    rm = RewardModel(randomize_(GPT(GPTConfig(**cfg)), 2, 0.3), "bt")
    torch.nn.init.normal_(rm.head.weight, std=0.5)
    folders["rm"] = str(root / "rm")
    rm.save_pretrained(folders["rm"])
    tok.save(folders["rm"])
    pairs, completions = [], []
    for i, p in enumerate(PROMPTS):
        ids, ref_ids = tok.encode(p), tok.encode(" It was great.") + [tok.eos_id]
        ref = f"{MARK} {i} It was great."  # the text the openai judge reads
        pairs.append(dict(prompt_ids=ids, chosen_ids=ref_ids, rejected_ids=[tok.eos_id],
                          prompt=p, chosen=ref, rejected="", reward_chosen=None,
                          reward_rejected=None))
        completions.append(dict(prompt_ids=ids, completion_ids=ref_ids, prompt=p,
                                completion=ref))
    pairs.append(dict(pairs[0], chosen_ids=[tok.eos_id], chosen="another pair, same prompt"))
    paths = types.SimpleNamespace(root=root, pairs=str(root / "pairs.jsonl"),
                                  completions=str(root / "completions.jsonl"), **folders)
    write_jsonl(paths.pairs, pairs)
    write_jsonl(paths.completions, completions)
    return paths


def config(tiny, out_dir, **kw):
    kw = dict(dict(policies=(f"sft={tiny.sft}", f"dpo={tiny.dpo}"), test=tiny.pairs,
                   judge="openai:judge-model", out_dir=str(out_dir), n=6,
                   temperatures=(0.0, 1.0), max_new_tokens=6, batch_size=8, concurrency=4,
                   retries=2, retry_delay=0.001, timeout=10.0, device="cpu"), **kw)
    return WinRateConfig(**kw)


# ----------------------------------------------------------------------------- prompts, math


def test_judge_prompts_are_the_appendix_ones():
    s = judge_message("summarization", "POST", "SA", "SB")
    assert s.startswith("Which of the following summaries does a better job of summarizing the "
                        "most important points in the given forum post, without including "
                        "unimportant or irrelevant details? A good summary is both precise and "
                        "concise.\n\nPost:\nPOST\n\nSummary A:\nSA\n\nSummary B:\nSB\n\nFIRST")
    assert s.endswith('Comparison: <one-sentence comparison and explanation>\n'
                      'Preferred: <"A" or "B">')
    simple = judge_message("summarization_simple", "POST", "SA", "SB")
    assert simple.startswith("Which of the following summaries does a better job of summarizing "
                             "the most important points in the given forum post?\n\nPost:")
    d = judge_message("dialogue", "Human: hi", "RA", "RB")
    assert d.startswith("For the following query to a chatbot, which response is more helpful?"
                        "\n\nQuery: Human: hi\n\nResponse A:\nRA\n\nResponse B:\nRB\n\nFIRST")
    assert d.endswith('More helpful: <"A" or "B">')
    assert "\\" not in s + simple + d and "{" not in s + simple + d


@pytest.mark.parametrize("task, answer, want", [
    ("summarization", "Comparison: A covers more.\nPreferred: A", "A"),
    ("summarization", 'Comparison: B is concise.\nPreferred: "B"', "B"),
    ("summarization", "Comparison: x\n**Preferred:** B.", "B"),
    ("dialogue", "Comparison: x\nMore helpful: B", "B"),
    ("dialogue", "Comparison: x\nmore helpful: 'A'", "A"),
    ("summarization", "I like A better.", None),  # no answer line
    ("summarization", "Comparison: x\nPreferred: A or B", None),
    ("summarization", "Comparison: x\nPreferred: C", None),
    ("summarization", "Comparison: x\nPreferred: A\nPreferred: B", None),  # two answers
    ("summarization", "Comparison: x\nPreferred:", None),
    ("dialogue", "Comparison: x\nPreferred: A", None),  # the other task's key
    ("summarization", "", None),
])
def test_parse_judgment_is_strict(task, answer, want):
    assert parse_judgment(task, answer) == want


def test_win_rate_and_stderr_by_hand():
    # rm judge: reward differences 0, ln 3, -ln 3 -> P(win) 0.5, 0.75, 0.25; mean 0.5; the sample
    # standard deviation is 0.25, so stderr = 0.25 / sqrt(3)
    cs = [dict(p_win=1 / (1 + math.exp(-d)), outcome="x") for d in (0.0, math.log(3), -math.log(3))]
    assert [c["p_win"] for c in cs] == pytest.approx([0.5, 0.75, 0.25])
    s = winrate.summarize(cs)
    assert s["win_rate"] == pytest.approx(0.5) and s["n"] == 3
    assert s["stderr"] == pytest.approx(0.25 / math.sqrt(3))
    # openai judge: win, win, loss, tie, failure -> (1 + 1 + 0 + 0.5) / 4, the failure left out
    cs = [dict(p_win=1.0, outcome="win"), dict(p_win=1.0, outcome="win"),
          dict(p_win=0.0, outcome="loss"), dict(p_win=0.5, outcome="tie"),
          dict(p_win=None, outcome="failure")]
    s = winrate.summarize(cs)
    assert (s["wins"], s["losses"], s["ties"], s["failures"], s["n"]) == (2, 1, 1, 1, 4)
    assert s["win_rate"] == pytest.approx(0.625)
    sd = math.sqrt(sum((x - 0.625) ** 2 for x in (1, 1, 0, 0.5)) / 3)
    assert s["stderr"] == pytest.approx(sd / 2)
    assert winrate.summarize([dict(p_win=None, outcome="failure")])["win_rate"] is None


# ----------------------------------------------------------------------------- the openai judge


def test_position_randomised_recorded_and_undone(tiny, judge, tmp_path):
    srv = judge(prefer(reference=True))
    rows = winrate.main(config(tiny, tmp_path / "ref"))
    assert [(r["policy"], r["temperature"]) for r in rows] == [
        ("sft", 0.0), ("sft", 1.0), ("dpo", 0.0), ("dpo", 1.0)]
    assert all(r["win_rate"] == 0.0 and r["n"] == 6 and r["failures"] == 0 for r in rows)
    comps = read_jsonl(tmp_path / "ref" / "comparisons.jsonl")
    assert len(comps) == 4 * 6 and srv.requests == 4 * 6 + 9  # and the judge's 9 test pairs
    assert {c["policy_is"] for c in comps} == {"A", "B"}  # both orders shown
    for c in comps:  # the judge picked the side the reference was shown on: a loss each time
        assert c["choice"] == ("B" if c["policy_is"] == "A" else "A") and c["outcome"] == "loss"
        assert c["reference"].startswith(MARK) and MARK not in c["response"]
    assert srv.bodies[0]["model"] == "judge-model" and srv.bodies[0]["temperature"] == 0.0
    assert srv.bodies[0]["messages"][0]["content"].startswith("For the following query")  # HH

    srv.rule = prefer(reference=False)  # the opposite judge, a fresh folder: every one a win
    rows = winrate.main(config(tiny, tmp_path / "policy"))
    assert all(r["win_rate"] == 1.0 and r["stderr"] == 0.0 for r in rows)
    again = read_jsonl(tmp_path / "policy" / "comparisons.jsonl")
    assert [c["policy_is"] for c in again] == [c["policy_is"] for c in comps]  # seeded
    assert os.path.getsize(tmp_path / "policy" / "winrate.png") > 0


def test_garbage_answers_are_counted_failures(tiny, judge, tmp_path):
    def rule(message):
        a, b, key = shown(message)
        if f"{MARK} 1 " in a + b or f"{MARK} 3 " in a + b:  # two prompts get no usable answer
            return "Both are fine, I cannot decide."
        return f"Comparison: x\n{key} {'B' if MARK in a else 'A'}"
    judge(rule)
    cfg = config(tiny, tmp_path, n=0)  # all 8 distinct prompts (the file's 9th row repeats one)
    rows = winrate.main(cfg)
    for r in rows:
        assert (r["failures"], r["n"], r["wins"], r["win_rate"]) == (2, 6, 6, 1.0)
    comps = read_jsonl(tmp_path / "comparisons.jsonl")
    bad = [c for c in comps if c["outcome"] == "failure"]
    assert len(bad) == 8 and all(c["choice"] is None and c["p_win"] is None for c in bad)
    assert all(c["answer"] == "Both are fine, I cannot decide." for c in bad)


def test_retries_after_429_and_5xx(judge):
    srv = judge(lambda m: "Comparison: x\nPreferred: A")
    ask = lambda retries: chat_completion(
        srv.url, "test-key", {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        timeout=5, retries=retries, delay=0.001)
    srv.fail = [429, 500, 503]
    assert ask(3) == "Comparison: x\nPreferred: A" and srv.requests == 4
    srv.fail = [429, 502, 500]
    with pytest.raises(OSError, match="no answer after 3 tries .HTTP 500"):
        ask(2)
    assert srv.requests == 7
    srv.fail = [401]  # a refused request is not retried
    with pytest.raises(OSError, match="refused the request: HTTP 401"):
        ask(5)
    assert srv.requests == 8


def test_cache_rerun_asks_nothing(tiny, judge, tmp_path):
    srv = judge(prefer(reference=False))
    cfg = config(tiny, tmp_path)
    first = winrate.main(cfg)
    asked = srv.requests
    # 24 comparisons and the judge's accuracy on the test file's 9 pairs
    assert asked == 24 + 9 and len(read_jsonl(tmp_path / "judge_cache.jsonl")) == 24 + 9
    assert winrate.main(cfg) == first
    assert srv.requests == asked  # zero requests the second time
    shared = str(tmp_path / "shared_cache.jsonl")  # another out_dir, the same cache file
    os.rename(tmp_path / "judge_cache.jsonl", shared)
    winrate.main(config(tiny, tmp_path / "other", cache=shared))
    assert srv.requests == asked


def test_interrupted_run_resumes(tiny, judge, tmp_path):
    srv = judge(prefer(reference=False))
    full = winrate.main(config(tiny, tmp_path / "whole"))
    total = srv.requests
    srv.requests, srv.answered, srv.ok_limit = 0, 0, 10  # then 500 for good: the run stops
    cfg = config(tiny, tmp_path / "cut", concurrency=1)
    with pytest.raises(OSError, match="no answer after 3 tries.*10 judgments so far are kept"):
        winrate.main(cfg)
    cut = tmp_path / "cut"
    assert len(read_jsonl(cut / "judge_cache.jsonl")) == 10
    assert not any(os.path.exists(cut / f) for f in
                   ("winrate.jsonl", "comparisons.jsonl", "winrate.png"))
    with open(cut / "judge_cache.jsonl", "a") as f:  # and a kill mid-write left a torn line
        f.write('{"key": "0123')
    srv.requests, srv.ok_limit = 0, None
    assert winrate.main(dataclasses.replace(cfg, concurrency=4)) == full
    assert srv.requests == total - 10  # only the missing ones
    assert len(read_jsonl(cut / "judge_cache.jsonl")) == total


def test_unreachable_endpoint_and_missing_key(tiny, judge, tmp_path, monkeypatch):
    judge(prefer(reference=False))  # sets the key; then point at a closed port
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{closed_port()}/v1")
    with pytest.raises(OSError, match="gave no answer after 3 tries .URLError.*no judgment"):
        winrate.main(config(tiny, tmp_path / "down"))
    left = set(os.listdir(tmp_path / "down"))
    assert left <= {"samples.jsonl"}, left  # no results, no cache: nothing half-written
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        winrate.main(config(tiny, tmp_path / "nokey"))
    assert not os.path.exists(tmp_path / "nokey")  # failed before anything


def test_cli_errors_are_one_line(tiny, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    base = [sys.executable, "-m", "hh_tldr.winrate", "--policies", f"sft={tiny.sft}",
            "--test", tiny.pairs, "--judge", "openai:m", "--n", "2", "--temperatures", "0",
            "--max_new_tokens", "4",
            "--retries", "1", "--retry_delay", "0.001", "--device", "cpu"]
    results = str(tmp_path / "winrate.jsonl")  # what winrate.py writes, by hand
    write_jsonl(results, [dict(policy=p, temperature=t, win_rate=w, stderr=0.05, judge="rm:x",
                               task="dialogue", expected=True)
                          for p, w0 in (("sft", 0.4), ("dpo", 0.6)) for t, w in
                          ((0.25, w0), (1.0, w0 - 0.1))])
    runs = {
        "help": ([sys.executable, "-m", "hh_tldr.winrate", "--help"], env),
        "plot": ([sys.executable, "-m", "hh_tldr.winrate", "plot", results], env),
        "nokey": (base + ["--out_dir", str(tmp_path / "a")], env),
        "down": (base + ["--out_dir", str(tmp_path / "b")],
                 dict(env, OPENAI_API_KEY="k",
                      OPENAI_BASE_URL=f"http://127.0.0.1:{closed_port()}/v1")),
    }
    procs = {k: subprocess.Popen(argv, cwd=REPO, env=e, text=True, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE) for k, (argv, e) in runs.items()}
    out = {k: (p.wait(timeout=120), *p.communicate()) for k, p in procs.items()}
    rc, stdout, _ = out["help"]
    assert rc == 0 and "--judge" in stdout and "openai:<model>" in stdout and "plot" in stdout
    rc, stdout, err = out["plot"]
    assert rc == 0 and stdout.strip().endswith("winrate.png"), err
    assert os.path.getsize(tmp_path / "winrate.png") > 0
    for k in ("nokey", "down"):
        rc, _, err = out[k]
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert rc == 1 and lines[-1].startswith("error: "), err
        assert not any(ln.startswith("Traceback") for ln in lines), err
    assert "OPENAI_API_KEY" in out["nokey"][2] and not os.path.exists(tmp_path / "a")
    assert "gave no answer" in out["down"][2]


# ----------------------------------------------------------------------------- the rm judge


def test_rm_judge_expected_win_rate(tiny, tmp_path):
    from data import load_tokenizer
    from model import sample_completions
    from reward import rm_tokens

    cfg = config(tiny, tmp_path, test=tiny.completions, judge=f"rm:{tiny.rm}", n=0,
                 temperatures=(0.0, 0.5), best_of=3, best_of_rm=tiny.rm)
    rows = winrate.main(cfg)
    assert [(r["policy"], r["temperature"]) for r in rows] == [
        (p, t) for p in ("sft", "dpo", "Best of 3") for t in (0.0, 0.5)]
    assert all(r["expected"] and r["task"] == "summarization" and r["n"] == 8 for r in rows)
    assert read_jsonl(tmp_path / "winrate.jsonl") == rows
    with open(tmp_path / "winrate.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not os.path.exists(tmp_path / "judge_cache.jsonl")

    # each P(win) is sigmoid(r(x, y_policy) - r(x, y_reference)) of the reward model itself
    rm, tok = RewardModel.from_pretrained(tiny.rm).eval(), load_tokenizer(tiny.rm)
    refs = {i: r for i, r in enumerate(read_jsonl(tiny.completions), 1)}
    comps = read_jsonl(tmp_path / "comparisons.jsonl")
    assert len(comps) == 6 * 8
    with torch.no_grad():
        for c in comps:
            ref = refs[c["index"]]
            r = rm.score([rm_tokens(ref["prompt_ids"] + c["response_ids"], tok.eos_id, 64),
                          rm_tokens(ref["prompt_ids"] + ref["completion_ids"], tok.eos_id, 64)],
                         tok.eos_id).tolist()
            assert c["r_policy"] == pytest.approx(r[0], abs=1e-5)
            assert c["r_reference"] == pytest.approx(r[1], abs=1e-5)
            assert c["p_win"] == pytest.approx(1 / (1 + math.exp(r[1] - r[0])), abs=1e-6)
    for row in rows:
        p = [c["p_win"] for c in comps if (c["policy"], c["temperature"]) ==
             (row["policy"], row["temperature"])]
        mean = sum(p) / len(p)
        assert row["win_rate"] == pytest.approx(mean)
        assert row["stderr"] == pytest.approx(
            math.sqrt(sum((x - mean) ** 2 for x in p) / (len(p) - 1)) / math.sqrt(len(p)))

    # temperature 0 is greedy decoding: the policy's argmax continuation
    sft = speed_up(GPT.from_pretrained(tiny.sft)).eval()  # as winrate.py loads it
    greedy = sample_completions(sft, [refs[1]["prompt_ids"]], 1, eos_id=tok.eos_id,
                                max_new_tokens=6, temperature=0.0)[0]
    assert next(c for c in comps if c["policy"] == "sft" and c["temperature"] == 0.0
                and c["index"] == 1)["response_ids"] == greedy
    # Best of 3 keeps, for each prompt, the reward model's favourite of its 3 samples (drawn
    # again here from the same seeded generator)
    g = torch.Generator().manual_seed(seed_for(cfg.seed, 1))  # temperature index 1: 0.5
    best = [c for c in comps if c["policy"] == "Best of 3" and c["temperature"] == 0.5]
    prompts = [refs[c["index"]]["prompt_ids"] for c in best]
    cands = sample_completions(sft, [p for p in prompts for _ in range(3)], 8, g, tok.eos_id,
                               max_new_tokens=6, temperature=0.5)
    for i, (c, p) in enumerate(zip(best, prompts)):
        mine = cands[3 * i: 3 * i + 3]
        with torch.no_grad():
            r = rm.score([rm_tokens(p + x, tok.eos_id, 64) for x in mine], tok.eos_id)
        assert c["response_ids"] == mine[int(r.argmax())]
    assert len({tuple(c["response_ids"]) for c in best}) > 1

    # a second run samples nothing again (samples.jsonl) and gives the same rows
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(winrate, "sample_block", None)  # calling it would fail
        assert winrate.main(cfg) == rows

    # a test file regenerated at the same path (new mtime) is sampled again, never paired with
    # the responses saved for the old one
    import dataclasses
    import shutil

    copy = tmp_path / "test_copy.jsonl"
    shutil.copy(cfg.test, copy)
    cfg2 = dataclasses.replace(cfg, test=str(copy), out_dir=str(tmp_path / "stale"),
                               temperatures=(0.0,), best_of=0)
    winrate.main(cfg2)
    st = os.stat(copy)
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    calls, real = [], winrate.sample_block
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(winrate, "sample_block", lambda *a, **k: calls.append(1) or real(*a, **k))
        winrate.main(cfg2)
    assert calls


def test_bad_inputs(tiny, tmp_path):
    with pytest.raises(ValueError, match="--judge must be"):
        winrate.main(config(tiny, tmp_path, judge="gpt4"))
    with pytest.raises(ValueError, match="NAME=FOLDER"):
        winrate.main(config(tiny, tmp_path, judge=f"rm:{tiny.rm}", policies=("x=",)))
    bad = tmp_path / "bad.jsonl"
    write_jsonl(str(bad), [{"text": "hello"}])
    with pytest.raises(ValueError, match="prompt_ids, chosen_ids"):
        winrate.main(config(tiny, tmp_path, judge=f"rm:{tiny.rm}", test=str(bad)))
    with pytest.raises(ValueError, match="not one of --policies"):
        winrate.main(config(tiny, tmp_path, judge=f"rm:{tiny.rm}", best_of=2,
                            best_of_policy="ppo"))


def test_plot_is_titled_by_its_data_spans_its_values_and_draws_the_correct_share(tmp_path):
    """The title names the data (the dataset and split preferences.py wrote the test file from,
    else the file's name), each y-axis spans where its values lie (the win rates' with the
    labelled 0.5 tie line) and correct.jsonl beside the results is drawn in a second panel."""
    test = tmp_path / "mine_test.jsonl"
    test.write_text("")
    assert winrate.data_name(str(test)) == "mine_test.jsonl"
    (tmp_path / "mine_test.jsonl.config.json").write_text(json.dumps(
        dict(dataset="mine", split="test", out=str(test))))
    assert winrate.data_name(str(test)) == "mine (test)"
    values = {("SFT", 0.0): 0.598, ("SFT", 1.0): 0.49, ("DPO", 0.0): 0.596, ("DPO", 1.0): 0.535}
    rows = [dict(policy=p, temperature=t, win_rate=v, stderr=0.01, judge="rm:runs/rm",
                 task="dialogue", data=winrate.data_name(str(test)), expected=True)
            for (p, t), v in values.items()]
    out = tmp_path / "winrate"
    out.mkdir()
    write_jsonl(out / "winrate.jsonl", rows)
    fig = winrate.winrate_figure(str(out / "winrate.jsonl"))
    [ax] = fig.axes
    assert ax.get_title().startswith("mine (test): dialogue")
    lo, hi = ax.get_ylim()
    assert 0.45 <= lo <= 0.48 and 0.608 <= hi <= 0.65  # 0.48 .. 0.608 and the 0.5 line
    assert "0.5: a tie with the reference" in [t.get_text() for t in ax.get_legend().texts]
    write_jsonl(out / "correct.jsonl", [dict(policy=p, temperature=t, correct=c, stderr=0.02, n=50)
                                        for (p, t), c in zip(values, (0.97, 0.65, 0.96, 0.75))])
    fig = winrate.winrate_figure(str(out / "winrate.jsonl"))
    win, correct = fig.axes
    assert win.get_ylim() == (lo, hi) and "rule" in correct.get_title()
    assert 0.58 <= correct.get_ylim()[0] <= 0.63 and 0.99 <= correct.get_ylim()[1] <= 1.0
    assert sorted(y for bars in correct.containers for y in bars.lines[0].get_ydata()) == [
        0.65, 0.75, 0.96, 0.97]  # one line of each policy's correct shares
    assert winrate.plot_winrate(str(out / "winrate.jsonl")) == str(out / "winrate.png")
    # a results file written before the data was named: titled by its task
    write_jsonl(out / "old.jsonl", [{k: v for k, v in r.items() if k != "data"} for r in rows])
    assert winrate.winrate_figure(str(out / "old.jsonl")).axes[0].get_title().startswith(
        "dialogue: dialogue")


def test_tldr_task_detection_and_the_judge_reads_the_post_without_the_cue():
    hh = [([1], "\n\nHuman: hi\n\nAssistant:", [2], " hello", 1)]
    tldr = [([1], "SUBREDDIT: r/cats POST: my cat sleeps.\nTL;DR:", [2], " cat sleeps", 1)]
    assert winrate.detect_task("pairs", hh) == "dialogue"
    assert winrate.detect_task("pairs", tldr) == "summarization"  # TL;DR comparisons
    assert winrate.detect_task("completions", hh) == "summarization"  # reference summaries
    message = judge_message("summarization", tldr[0][1], "x", "y")
    assert "my cat sleeps." in message and "TL;DR:" not in message
    assert "TL;DR:" in judge_message("dialogue", tldr[0][1], "x", "y")


# ----------------------------------------------------------------------------- the judge's quality


def agreement(r_chosen: float, r_rejected: float) -> float:
    return 1.0 if r_chosen > r_rejected else 0.0 if r_chosen < r_rejected else 0.5


def stderr(values):
    m = sum(values) / len(values)
    return math.sqrt(sum((x - m) ** 2 for x in values) / (len(values) - 1) / len(values))


def test_rm_judge_accuracy_by_hand_cached_and_captioned(tiny, tmp_path, monkeypatch):
    """The rm judge's accuracy on a seeded choice of held-out pairs is the share with r(chosen) >
    r(rejected) by the reward model itself (a tie 0.5), in every row, judge.json and the plot's
    caption; a rerun reads judge.json back, another --judge_n measures again."""
    import random

    from data import load_tokenizer
    from reward import rm_tokens

    cfg = config(tiny, tmp_path, judge=f"rm:{tiny.rm}", n=2, temperatures=(0.0,), judge_n=5)
    rows = winrate.main(cfg)
    pairs = read_jsonl(tiny.pairs)
    lines = sorted(random.Random(cfg.seed).sample(range(len(pairs)), 5))  # the seeded choice
    rm, tok = RewardModel.from_pretrained(tiny.rm).eval(), load_tokenizer(tiny.rm)
    agree = []
    with torch.no_grad():
        for i in lines:
            p = pairs[i]
            r = rm.score([rm_tokens(p["prompt_ids"] + p[k], tok.eos_id, 64)
                          for k in ("chosen_ids", "rejected_ids")], tok.eos_id).tolist()
            agree.append(agreement(*r))
    judged = read_jsonl(tmp_path / "judged_pairs.jsonl")
    assert [j["index"] for j in judged] == [i + 1 for i in lines]  # the file's lines
    assert [j["agrees"] for j in judged] == agree
    assert 0 < sum(agree) < len(agree)  # neither all right nor all wrong: a real check
    want = dict(judge_accuracy=pytest.approx(sum(agree) / 5),
                judge_accuracy_stderr=pytest.approx(stderr(agree)), judge_accuracy_n=5,
                judge_accuracy_vs="labels", judge_accuracy_failures=0, judge_pairs=tiny.pairs)
    for r in rows:
        assert {k: r[k] for k in want} == want and "rule_win_rate" not in r
    assert read_jsonl(tmp_path / "winrate.jsonl") == rows
    with open(tmp_path / "judge.json") as f:
        assert {k: v for k, v in json.load(f)["accuracy"].items() if k in want} == want
    caption = " ".join(t.get_text() for t in winrate.winrate_figure(
        str(tmp_path / "winrate.jsonl")).texts).replace("\n", " ")
    assert (f"judge rm:{tiny.rm}: accuracy {sum(agree) / 5:.3f} ± {stderr(agree):.3f} on 5 "
            f"held-out pairs (vs their labels)") in caption

    monkeypatch.setattr(winrate, "pair_comparisons", None)  # measuring again would fail
    assert winrate.main(cfg) == rows
    monkeypatch.undo()
    rows = winrate.main(dataclasses.replace(cfg, judge_n=0))  # all 9: the 9th pair ties
    assert rows[0]["judge_accuracy_n"] == 9
    assert read_jsonl(tmp_path / "judged_pairs.jsonl")[-1]["agrees"] == 0.5  # the same ids


def test_openai_judge_accuracy_on_given_pairs(tiny, judge, tmp_path):
    """--judge_pairs beside a completions test file: each pair asked as the win rates ask, the A/B
    order drawn per pair and undone, a failure left out and counted; a rerun asks nothing."""
    def rule(message):
        a, b, key = shown(message)
        if MARK not in a + b:  # the 9th pair: chosen and rejected both unmarked
            return "Both are fine."
        wrong = f"{MARK} 2 " in a + b or f"{MARK} 5 " in a + b  # these two: the unmarked side
        return f"Comparison: x\n{key} {'A' if (MARK in a) != wrong else 'B'}"
    srv = judge(rule)
    cfg = config(tiny, tmp_path, test=tiny.completions, judge_pairs=tiny.pairs, judge_n=0)
    rows = winrate.main(cfg)
    agree = [1.0] * 6 + [0.0] * 2
    for r in rows:
        assert (r["judge_accuracy"], r["judge_accuracy_n"], r["judge_accuracy_failures"]) == (
            0.75, 8, 1)
        assert r["judge_accuracy_stderr"] == pytest.approx(stderr(agree))
        assert r["judge_accuracy_vs"] == "labels" and r["task"] == "summarization"
    judged = read_jsonl(tmp_path / "judged_pairs.jsonl")
    assert {j["chosen_is"] for j in judged} == {"A", "B"}  # both orders shown
    for j in judged[:8]:
        assert (j["choice"] == j["chosen_is"]) == (j["judge"] == "chosen")
        assert j["agrees"] == (0.0 if j["index"] in (3, 6) else 1.0)  # MARK 2 and 5
    assert judged[8]["judge"] == "failure" and judged[8]["agrees"] is None
    assert srv.requests == 4 * 6 + 9
    assert all(b["messages"][0]["content"].startswith("Which of the following summaries")
               for b in srv.bodies)
    assert winrate.main(cfg) == rows and srv.requests == 4 * 6 + 9


@pytest.fixture(scope="module")
def dialogues(tmp_path_factory):
    """A tiny policy and reward model in the synthetic dialogues' vocabulary, and a pairs file of
    12 synthetic dialogues whose labels are the rule's (a coin where it ties) but for two pairs
    swapped: label noise, so that the labels and the rule disagree somewhere."""
    import types

    from data import Tokenizer

    from synthetic.dialogues import ASSISTANT, dialogue_reward, dialogue_vocab, synthetic_dialogues

    tok = Tokenizer(dialogue_vocab())
    root = tmp_path_factory.mktemp("dialogues")
    cfg = dict(block_size=64, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32,
               eos_token_id=tok.eos_id)
    torch.manual_seed(0)
    sft = str(root / "sft")
    randomize_(GPT(GPTConfig(**cfg)), 0, 0.3).save_pretrained(sft)
    torch.manual_seed(3)
    rm = RewardModel(randomize_(GPT(GPTConfig(**cfg)), 3, 0.3), "bt")
    torch.nn.init.normal_(rm.head.weight, std=0.5)
    rm.save_pretrained(str(root / "rm"))
    for folder in (sft, str(root / "rm")):
        tok.save(folder)
    pairs, swapped = [], 0
    for r in synthetic_dialogues(12, 3):
        prompt, chosen = r["chosen"].split(ASSISTANT)
        rejected = r["rejected"].split(ASSISTANT)[1]
        prompt += ASSISTANT
        if swapped < 2 and dialogue_reward(prompt, chosen) > dialogue_reward(prompt, rejected):
            chosen, rejected, swapped = rejected, chosen, swapped + 1
        pairs.append(dict(prompt_ids=tok.encode(prompt), chosen_ids=tok.encode(chosen),
                          rejected_ids=tok.encode(rejected), prompt=prompt, chosen=chosen,
                          rejected=rejected))
    write_jsonl(str(root / "pairs.jsonl"), pairs)
    return types.SimpleNamespace(tok=tok, sft=sft, rm=str(root / "rm"),
                                 pairs=str(root / "pairs.jsonl"))


def test_rule_win_rate_and_judge_accuracy_vs_the_rule(dialogues, tmp_path, monkeypatch):
    """--rule dialogue: each comparison's rule verdict (dialogue_reward of the response against
    the reference's: 1, 0.5, 0) averages to the rows' rule_win_rate; the judge's accuracy against
    the rule is its agreement with the rule's side of each pair the rule decides; the plot draws
    the rule's win rate in a panel beside, in the policy's colour, and states both accuracies."""
    from synthetic.dialogues import _questions, dialogue_reward

    tok, questions = dialogues.tok, _questions()

    def sample(model, prompts, batch_size, g, eos_id, max_new_tokens, temperature):
        """A stand-in policy: the correct answer for about half the prompts, a wrong one else."""
        out = []
        for p in prompts:
            text = tok.decode(p)
            right = questions[max((q for q in questions if q in text), key=len)]
            wrong = next(a for a in sorted(questions.values()) if right not in a)
            pick = right if (len(p) + int(temperature)) % 2 else wrong
            out.append(tok.encode(" " + pick) + [eos_id])
        return out

    monkeypatch.setattr(winrate, "sample_completions", sample)
    cfg = WinRateConfig(policies=(f"sft={dialogues.sft}",), test=dialogues.pairs,
                        judge=f"rm:{dialogues.rm}", out_dir=str(tmp_path), n=0,
                        temperatures=(0.0, 1.0), max_new_tokens=12, batch_size=8, device="cpu",
                        judge_n=0, rule="dialogue")
    rows = winrate.main(cfg)
    comps = read_jsonl(tmp_path / "comparisons.jsonl")
    verdicts = set()
    for r in rows:
        v = [agreement(dialogue_reward(c["prompt"], c["response"]),
                       dialogue_reward(c["prompt"], c["reference"]))
             for c in comps if c["temperature"] == r["temperature"]]
        assert [c["rule_win"] for c in comps if c["temperature"] == r["temperature"]] == v
        assert r["rule"] == "dialogue" and r["rule_win_rate"] == pytest.approx(sum(v) / len(v))
        assert r["rule_stderr"] == pytest.approx(stderr(v))
        verdicts |= set(v)
    assert verdicts == {0.0, 0.5, 1.0}

    # the judge's accuracy against the labels and against the rule, by hand
    from data import load_tokenizer
    from reward import rm_tokens

    rm, eos = RewardModel.from_pretrained(dialogues.rm).eval(), load_tokenizer(dialogues.rm).eos_id
    labels, vs_rule, labels_vs_rule = [], [], []
    with torch.no_grad():
        for p in read_jsonl(dialogues.pairs):
            r = rm.score([rm_tokens(p["prompt_ids"] + p[k], eos, 64)
                          for k in ("chosen_ids", "rejected_ids")], eos).tolist()
            same = p["chosen"].strip() == p["rejected"].strip()
            labels.append(0.5 if same else agreement(*r))
            side = agreement(*(dialogue_reward(p["prompt"].strip(), p[k].strip())
                               for k in ("chosen", "rejected")))
            if side != 0.5:  # the rule decides this pair
                vs_rule.append(labels[-1] if side == 1.0 else 1.0 - labels[-1])
                labels_vs_rule.append(side)
    assert 0 < sum(labels_vs_rule) < len(labels_vs_rule)  # the two swapped pairs
    for r in rows:
        assert r["judge_accuracy"] == pytest.approx(sum(labels) / len(labels))
        assert r["judge_accuracy_n"] == 12 and r["judge_accuracy_vs"] == "labels"
        assert r["judge_accuracy_rule"] == pytest.approx(sum(vs_rule) / len(vs_rule))
        assert r["judge_accuracy_rule_stderr"] == pytest.approx(stderr(vs_rule))
        assert r["judge_accuracy_rule_n"] == len(vs_rule) < 12
        assert r["labels_agree_rule"] == pytest.approx(
            sum(labels_vs_rule) / len(labels_vs_rule))

    # the plot: the rule's win rate in a panel beside the judge's, the policy in the same colour,
    # and both accuracies below
    with open(tmp_path / "winrate.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    fig = winrate.winrate_figure(str(tmp_path / "winrate.jsonl"))
    judged, ax = fig.axes
    [solid], [by_rule] = judged.containers, ax.containers
    assert by_rule.lines[0].get_color() == solid.lines[0].get_color()
    assert list(by_rule.lines[0].get_ydata()) == [r["rule_win_rate"] for r in rows]
    assert list(solid.lines[0].get_ydata()) == [r["win_rate"] for r in rows]
    assert "rule (dialogue)" in ax.get_title()
    assert "sft" in [t.get_text() for t in ax.get_legend().texts]
    [caption] = [t.get_text().replace("\n", " ") for t in fig.texts]
    assert f"accuracy {rows[0]['judge_accuracy']:.3f}" in caption
    assert (f"{rows[0]['judge_accuracy_rule']:.3f} ± {rows[0]['judge_accuracy_rule_stderr']:.3f}"
            f" vs the rule dialogue on the {len(vs_rule)} it decides") in caption
    lo, hi = ax.get_ylim()
    assert all(lo <= r["rule_win_rate"] <= hi for r in rows)


def test_judge_pairs_and_rule_refused_or_absent(tiny, tmp_path, monkeypatch):
    """A completions file as --judge_pairs, an unknown --rule or one that cannot read the test
    file fail before anything is sampled; no pairs (a completions test file, or --judge_pairs
    none): the rows say not measured. The summary rule is imported only when asked for."""
    with pytest.raises(ValueError, match="--judge_pairs .*completions.jsonl is not a pairs file"):
        winrate.main(config(tiny, tmp_path / "a", judge=f"rm:{tiny.rm}",
                            judge_pairs=tiny.completions))
    with pytest.raises(ValueError, match="--rule must be one of dialogue, summary"):
        winrate.main(config(tiny, tmp_path / "a", judge=f"rm:{tiny.rm}", rule="truth"))
    with pytest.raises(ValueError, match="--rule dialogue cannot score .*not a synthetic"):
        winrate.main(config(tiny, tmp_path / "a", judge=f"rm:{tiny.rm}", rule="dialogue"))
    with pytest.raises(FileNotFoundError, match="--judge_pairs nowhere.jsonl"):
        winrate.main(config(tiny, tmp_path / "a", judge=f"rm:{tiny.rm}",
                            judge_pairs="nowhere.jsonl"))
    assert not os.path.exists(tmp_path / "a")
    for name, kw in (("b", dict(test=tiny.completions)), ("c", dict(judge_pairs="none"))):
        rows = winrate.main(config(tiny, tmp_path / name, judge=f"rm:{tiny.rm}", n=2,
                                   temperatures=(0.0,), **kw))
        assert {k: rows[0][k] for k in ("judge_accuracy", "judge_accuracy_stderr",
                                        "judge_accuracy_n", "judge_accuracy_vs")} == dict(
            judge_accuracy=None, judge_accuracy_stderr=None, judge_accuracy_n=0,
            judge_accuracy_vs=None)
        assert not os.path.exists(tmp_path / name / "judge.json")
        fig = winrate.winrate_figure(str(tmp_path / name / "winrate.jsonl"))
        assert "accuracy not measured (no held-out pairs)" in fig.texts[0].get_text().replace(
            "\n", " ")
    import types

    monkeypatch.setitem(sys.modules, "synthetic.summaries", types.SimpleNamespace(
        summary_reward=lambda prompt, summary: -len(summary)))  # shorter is better
    rule = winrate.load_rule("summary", "post", "a summary", "test.jsonl")
    assert winrate.rule_verdict(rule, "post", "short", "longer one") == (-5.0, -10.0, 1.0)
