"""The server through the official `openai` client, against a real uvicorn server on 127.0.0.1:
models, completions, chat through the template, streaming, stop strings, seeds, n, logprobs, the key,
and the classification route. Each answer is checked against the engine run alone on the same model."""

from types import SimpleNamespace

import httpx
import openai
import pytest
import torch
from serve_helpers import as_float64, running

from scratchllm.config.sample import SampleConfig
from scratchllm.generate.templates import CHAT_END, chat_prompt
from scratchllm.generate.text import complete_batch, prompt_ids
from scratchllm.serve.models import load_models

PROMPT = "Once upon a time"


def specs(dirs):
    return [f"tiny={dirs['base']}", f"chat-tiny={dirs['chat']}", f"rope={dirs['rope']}"]


@pytest.fixture(scope="module")
def served(model_dirs):
    models = as_float64(load_models(specs(model_dirs)))
    ref = as_float64(load_models(specs(model_dirs)))  # our own copies, for answers computed alone
    with running(models) as (url, app):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        yield SimpleNamespace(url=url, app=app, ref=ref, client=client)


def alone(served, name, prompt, max_tokens, stop=(), **sampling):
    """(text, finish_reason, prompt tokens) of `prompt` generated alone, greedy unless told."""
    m = served.ref[name]
    config = SampleConfig(**{"temperature": 0, "max_new_tokens": max_tokens, "stop": tuple(stop), **sampling})
    c = complete_batch(m.model, m.tokenizer, [prompt], config, eos_id=m.eos_ids)[0]
    return c.text, "stop" if c.finish_reason == "eos" else c.finish_reason, len(prompt_ids(m.tokenizer, prompt))


def test_models_are_listed_by_name(served):
    models = {m.id: m for m in served.client.models.list().data}
    assert list(models) == ["tiny", "chat-tiny", "rope"]
    assert models["chat-tiny"].model_extra["template"] == "chat" and models["tiny"].model_extra["template"] is None
    assert served.client.models.retrieve("rope").id == "rope"


@pytest.mark.parametrize("name", ["tiny", "rope"])
def test_completion_equals_the_prompt_generated_alone(served, name):
    text, reason, n_prompt = alone(served, name, PROMPT, 20)
    r = served.client.completions.create(model=name, prompt=PROMPT, max_tokens=20, temperature=0)
    assert r.object == "text_completion" and r.model == name
    assert r.choices[0].text == text and len(text) > 3
    assert r.choices[0].finish_reason == reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (n_prompt, 20, n_prompt + 20)


def test_default_max_tokens_is_openais_16(served):
    r = served.client.completions.create(model="tiny", prompt=PROMPT, temperature=0)
    assert r.usage.completion_tokens == 16 and r.choices[0].text == alone(served, "tiny", PROMPT, 16)[0]


def test_chat_reads_the_checkpoints_template(served):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    text, reason, n_prompt = alone(served, "chat-tiny", chat_prompt(messages), 25, stop=(CHAT_END,))
    r = served.client.chat.completions.create(model="chat-tiny", messages=messages, max_tokens=25, temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == text
    assert r.choices[0].finish_reason == reason
    assert r.usage.prompt_tokens == n_prompt


def test_chat_with_a_base_model_continues_the_text(served):
    messages = [{"role": "system", "content": "A story."}, {"role": "user", "content": "Once"}]
    text, _, n_prompt = alone(served, "tiny", "A story.\nOnce", 12)
    r = served.client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
    assert r.choices[0].message.content == text and r.usage.prompt_tokens == n_prompt


def test_streams_give_the_same_text_and_end_with_done(served):
    whole = served.client.completions.create(model="rope", prompt=PROMPT, max_tokens=24, temperature=0)
    chunks = list(served.client.completions.create(model="rope", prompt=PROMPT, max_tokens=24, temperature=0,
                                                   stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 24 and not chunks[-1].choices
    messages = [{"role": "user", "content": "Hi"}]
    whole = served.client.chat.completions.create(model="chat-tiny", messages=messages, max_tokens=15, temperature=0)
    chunks = list(served.client.chat.completions.create(model="chat-tiny", messages=messages, max_tokens=15,
                                                        temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    # the raw stream: server-sent events, the last one [DONE]
    with httpx.stream("POST", served.url + "/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 3,
                                                                    "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"


def test_stop_string_ends_the_answer_before_it(served):
    text, _, _ = alone(served, "tiny", PROMPT, 30)
    k = next(i for i in range(4, len(text) - 3) if text.find(text[i:i + 2]) == i)  # first occurrence at k
    stop = text[k:k + 2]
    r = served.client.completions.create(model="tiny", prompt=PROMPT, max_tokens=30, temperature=0,
                                         stop=[stop, "never-seen"])
    assert r.choices[0].text == text[:k] and r.choices[0].finish_reason == "stop"
    chunks = list(served.client.completions.create(model="tiny", prompt=PROMPT, max_tokens=30, temperature=0,
                                                   stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == text[:k]


def test_end_of_text_id_ends_the_answer_with_stop(served, model_dirs, tmp_path):
    # a model whose end-of-text id is the token greedy decoding draws first: an empty answer, "stop"
    m = served.ref["tiny"]
    first = complete_batch(m.model, m.tokenizer, [PROMPT], SampleConfig(temperature=0, max_new_tokens=1),
                           eos_id=None)[0].ids[0]
    models = as_float64(load_models([str(model_dirs["base"])]))
    models["base"].meta["generation"] = {"eos_token_id": first}
    with running(models) as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        r = client.completions.create(model="base", prompt=PROMPT, max_tokens=10, temperature=0)
    assert r.choices[0].text == "" and r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == 1


def test_a_seed_gives_the_same_text_alone_or_batched(served):
    def ask(seed, n=1):
        return served.client.completions.create(model="tiny", prompt=PROMPT, max_tokens=20, temperature=1.0,
                                                top_p=0.9, seed=seed, n=n)

    first = ask(123).choices[0].text
    assert ask(123).choices[0].text == first
    assert ask(124).choices[0].text != first
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:  # four at once share decoding steps, each with its own generator
        texts = list(pool.map(lambda s: ask(s).choices[0].text, [123, 7, 123, 9]))
    assert texts[0] == texts[2] == first


def test_n_answers_each_seeded_seed_plus_index(served):
    r = served.client.completions.create(model="tiny", prompt=PROMPT, max_tokens=15, temperature=1.0, seed=5, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    texts = [c.text for c in r.choices]
    assert len(set(texts)) == 3
    assert r.usage.prompt_tokens == len(PROMPT)  # counted once, not per answer
    used = 0
    for i in range(3):
        again = served.client.completions.create(model="tiny", prompt=PROMPT, max_tokens=15, temperature=1.0,
                                                 seed=5 + i)
        assert again.choices[0].text == texts[i]
        assert again.choices[0].finish_reason == r.choices[i].finish_reason
        used += again.usage.completion_tokens
    assert r.usage.completion_tokens == used
    greedy = served.client.chat.completions.create(model="chat-tiny", messages=[{"role": "user", "content": "Hi"}],
                                                   max_tokens=8, temperature=0, n=2)
    assert greedy.choices[0].message.content == greedy.choices[1].message.content


def test_several_prompts_give_answers_in_order(served):
    prompts = ["abc", "The end", "x"]
    r = served.client.completions.create(model="tiny", prompt=prompts, max_tokens=6, temperature=0, n=2)
    assert [c.index for c in r.choices] == list(range(6))
    for i, p in enumerate(prompts):
        assert r.choices[2 * i].text == r.choices[2 * i + 1].text == alone(served, "tiny", p, 6)[0]
    ids = served.client.completions.create(model="tiny", prompt=[79, 110, 99, 101], max_tokens=6, temperature=0)
    assert ids.choices[0].text == alone(served, "tiny", "Once", 6)[0]


def test_logprobs_are_the_models(served):
    r = served.client.completions.create(model="tiny", prompt=PROMPT, max_tokens=5, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    m = served.ref["tiny"]
    with torch.no_grad():
        logits = m.model(torch.tensor([prompt_ids(m.tokenizer, PROMPT)]))[0, -1]
    expected = torch.log_softmax(logits, dim=-1)
    assert lp.token_logprobs[0] == pytest.approx(expected.max().item(), abs=1e-6)  # greedy: the top token
    assert max(lp.top_logprobs[0].values()) == pytest.approx(expected.max().item(), abs=1e-6)
    assert all(1 <= len(t) <= 3 for t in lp.top_logprobs) and lp.text_offset == sorted(lp.text_offset)
    chat = served.client.chat.completions.create(model="chat-tiny", messages=[{"role": "user", "content": "Hi"}],
                                                 max_tokens=4, temperature=0, logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens - (chat.choices[0].finish_reason == "stop")
    assert all(len(c.top_logprobs) == 2 and c.logprob <= 0 for c in content)


def test_api_key_is_refused_or_accepted(model_dirs):
    models = load_models([f"tiny={model_dirs['base']}"])
    with running(models, api_key="sesame") as (url, _):
        for key in ("wrong", None):
            client = openai.OpenAI(base_url=url + "/v1", api_key=key or "x", max_retries=0,
                                   default_headers={} if key else {"Authorization": ""})
            with pytest.raises(openai.AuthenticationError) as e:
                client.completions.create(model="tiny", prompt="a", max_tokens=2)
            assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
        ok = openai.OpenAI(base_url=url + "/v1", api_key="sesame", max_retries=0)
        assert ok.completions.create(model="tiny", prompt="a", max_tokens=2, temperature=0).usage.completion_tokens == 2
        assert [m.id for m in ok.models.list().data] == ["tiny"]
        assert httpx.get(url + "/health").json()["status"] == "ok"  # no key needed
        assert httpx.get(url + "/v1/models").status_code == 401


def test_classifier_route(model_dirs):
    from scratchllm.finetune.classify import load_classifier, predict

    models = load_models([f"clf={model_dirs['clf']}", f"tiny={model_dirs['base']}"])
    texts = ["win a prize now", "see you at lunch", ""]
    model, tok, task = load_classifier(str(model_dirs["clf"]))
    probs, _ = predict(model, tok, task, texts)
    with running(models) as (url, _):
        r = httpx.post(url + "/v1/classifications", json={"model": "clf", "input": texts})
        assert r.status_code == 200
        data = r.json()["data"]
        assert [d["label"] for d in data] == [task["labels"][k] for k in probs.argmax(axis=1)]
        for d, p in zip(data, probs):
            assert list(d["probabilities"].values()) == pytest.approx(list(p), abs=1e-6)
        single = httpx.post(url + "/v1/classifications", json={"model": "clf", "input": "hi"}).json()
        assert len(single["data"]) == 1 and set(single["data"][0]["probabilities"]) == {"ham", "spam"}
        listed = {m["id"]: m for m in httpx.get(url + "/v1/models").json()["data"]}
        assert listed["clf"]["kind"] == "classifier" and listed["clf"]["labels"] == ["ham", "spam"]
        wrong = httpx.post(url + "/v1/completions", json={"model": "clf", "prompt": "a"})
        assert wrong.status_code == 400 and "classifier" in wrong.json()["error"]["message"]
        wrong = httpx.post(url + "/v1/classifications", json={"model": "tiny", "input": "a"})
        assert wrong.status_code == 400 and "not a classifier" in wrong.json()["error"]["message"]
