"""The consistency judge client against a loopback stub server: replies, cache, bounded retries and timeouts."""

import time

import pytest

from mapo_verl.rewards.judge import JudgeClient, JudgeError, JudgeSettings, consistency_prompt, judge_consistency


def client(stub, **overrides):
    settings = {"base_url": stub.url, "model": "judge-7b", "timeout_s": 2.0, "max_retries": 2, "backoff_s": 0.01,
                **overrides}
    return JudgeClient(JudgeSettings(**settings))


def test_request_is_an_openai_chat_completion(stub_judge, monkeypatch):
    monkeypatch.setenv("MAPO_JUDGE_API_KEY", "secret-token")
    stub_judge.script = ["Yes, it does."]
    assert judge_consistency(client(stub_judge), "What is it?", ["dog", "cat"], "It meows.", "(B) cat") == 1.0
    (request,) = stub_judge.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer secret-token"
    body = request["body"]
    assert body["model"] == "judge-7b" and body["temperature"] == 0.0
    prompt = body["messages"][0]["content"]
    assert "What is it?" in prompt and "(A) dog\n(B) cat" in prompt and "It meows." in prompt and "(B) cat" in prompt


def test_no_verdict_and_unreadable_reply(stub_judge):
    stub_judge.script = ["No."]
    assert judge_consistency(client(stub_judge), "q", ["a", "b"], "r", "(A) a") == 0.0
    stub_judge.script = ["perhaps"]
    with pytest.raises(JudgeError, match="neither yes nor no"):
        judge_consistency(client(stub_judge), "q2", ["a", "b"], "r", "(A) a")


def test_replies_are_cached_in_memory_and_across_processes(stub_judge, tmp_path):
    cache = str(tmp_path / "judge.sqlite")
    first = client(stub_judge, cache_path=cache)
    assert first.ask("p") == "yes" and first.ask("p") == "yes"
    assert len(stub_judge.requests) == 1 and first.attempts == 1
    second = client(stub_judge, cache_path=cache)  # a new client (another reward worker) reads the file
    assert second.ask("p") == "yes" and second.attempts == 0 and len(stub_judge.requests) == 1
    other_model = client(stub_judge, cache_path=cache, model="other")
    other_model.ask("p")
    assert len(stub_judge.requests) == 2  # the cache key includes the model


def test_transient_errors_are_retried_with_backoff(stub_judge):
    stub_judge.script = [500, 429, "yes"]
    judge = client(stub_judge, max_retries=2)
    assert judge.ask("p") == "yes"
    assert judge.attempts == 3 and len(stub_judge.requests) == 3


def test_retries_are_bounded(stub_judge):
    stub_judge.script = [503]
    judge = client(stub_judge, max_retries=3)
    with pytest.raises(JudgeError, match="no reply after 4 attempt"):
        judge.ask("p")
    assert judge.attempts == 4 and len(stub_judge.requests) == 4


def test_client_errors_are_not_retried(stub_judge):
    stub_judge.script = [401]
    judge = client(stub_judge, max_retries=5)
    with pytest.raises(JudgeError, match="HTTP 401"):
        judge.ask("p")
    assert judge.attempts == 1


def test_a_slow_judge_times_out_within_the_bound(stub_judge):
    stub_judge.script = [("sleep", 2.0, "yes")]
    judge = client(stub_judge, timeout_s=0.2, max_retries=1, backoff_s=0.05)
    start = time.monotonic()
    with pytest.raises(JudgeError, match="2 attempt"):
        judge.ask("p")
    elapsed = time.monotonic() - start
    assert judge.attempts == 2 and elapsed < 1.5  # 2 × 0.2 s timeouts + 0.05 s back-off, not 2 × 2 s


def test_an_unreachable_judge_fails_after_the_retries():
    import socket

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    judge = JudgeClient(JudgeSettings(base_url=f"http://127.0.0.1:{port}/v1", model="m", timeout_s=0.5,
                                      max_retries=1, backoff_s=0.01))
    with pytest.raises(JudgeError, match="2 attempt"):
        judge.ask("p")


@pytest.mark.parametrize("overrides,key", [
    ({"base_url": "judge:8000"}, "judge_base_url"),
    ({"model": ""}, "judge_model"),
    ({"timeout_s": 0}, "judge_timeout_s"),
    ({"max_retries": -1}, "judge_max_retries"),
])
def test_settings_are_validated_naming_the_reward_kwarg(overrides, key):
    settings = {"base_url": "http://127.0.0.1:1/v1", "model": "m", **overrides}
    with pytest.raises(ValueError, match=f"reward_kwargs.{key} must be"):
        JudgeSettings(**settings)


def test_long_reasoning_is_cut_to_its_end():
    prompt = consistency_prompt("q", ["a", "b"], "x" * 100 + "THE END", "(A) a", max_reasoning_chars=20)
    assert "...xxxxxxxxxxxxxTHE END" in prompt and "x" * 30 not in prompt
