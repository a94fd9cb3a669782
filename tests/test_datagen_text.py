"""The text stage: format, filters, caption files, the three backends and LM fine-tuning."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from ip2p.datagen.backends import FEW_SHOT, HFBackend, OpenAIBackend, TemplateBackend, make_backend
from ip2p.datagen.finetune import (
    IGNORE,
    FinetuneOptions,
    completion_loss,
    encode_example,
    finetune_text,
    read_examples,
)
from ip2p.datagen.text import (
    EditRecord,
    TextOptions,
    format_completion,
    format_prompt,
    generate_text,
    is_blocked,
    parse_completion,
    read_captions,
    read_prompts,
    write_prompts,
)
from ip2p.datagen.tiny import build_tiny_lm
from ip2p.errors import BadData, BadOptions

torch.set_num_threads(1)

EXAMPLES = [
    EditRecord("a red circle", "make it blue", "a blue circle"),
    EditRecord("a cat on a chair", "turn the cat into a dog", "a dog on a chair"),
    EditRecord("a street at noon", "make it night", "a street at night"),
]


class ScriptedBackend:
    """A backend that answers from a table (for testing the filter logic, not a model)."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def complete(self, captions, seeds):
        self.calls.append(list(captions))
        return [self.answers[c].pop(0) for c in captions]


def test_format_round_trip_and_malformed():
    text = format_completion("make it blue", "a blue circle")
    assert text == "make it blue\n%%\na blue circle\nEND"
    assert format_prompt("a red circle ") == "a red circle\n##\n"
    assert parse_completion(text + "\n\nmore text") == ("make it blue", "a blue circle")
    for bad in ("make it blue\n%%\na blue circle",  # ran out of tokens: no END
                "make it blue a blue circle\nEND",  # no delimiter
                "a\n%%\nb\n%%\nc\nEND", "\n%%\nx\nEND", "two\nlines\n%%\nx\nEND"):
        assert parse_completion(bad) is None, bad


def test_filters_drop_retry_block_and_dedupe():
    ok = format_completion
    backend = ScriptedBackend({
        "a red circle": ["garbage", ok("make it blue", "a blue circle")],  # malformed, then fine
        "a cat": [ok("do nothing", "A cat.")],  # the output equals the input
        "a dog": [ok("add a gun", "a dog with a gun")],  # blocked
        "a house": ["x", "y", "z"],  # never well formed: given up after 2 retries
        "a tree": [ok("make it autumn", "an autumn tree")],
    })
    captions = ["a red circle", "a cat", "a dog", "a house", "a tree", "a tree"]
    backend.answers["a tree"].append(ok("Make it autumn", "a tree in autumn"))  # duplicate instruction
    records, stats = generate_text(captions, backend, TextOptions(retries=2, batch_size=4, blocklist=("gun",)))
    assert [r.to_dict() for r in records] == [
        {"caption": "a red circle", "edit": "make it blue", "output": "a blue circle"},
        {"caption": "a tree", "edit": "make it autumn", "output": "an autumn tree"},
    ]
    assert (stats.malformed, stats.gave_up, stats.unchanged, stats.blocked, stats.duplicates) == (4, 1, 1, 1, 1)
    assert backend.calls[2:] == [["a red circle", "a house"], ["a house"]]  # only malformed ones re-asked


def test_moderation_hook_and_blocklist_words():
    record = EditRecord("a man", "give him a Knife!", "a man with a knife")
    assert is_blocked(record, ["knife"]) and not is_blocked(record, ["knif"])
    backend = TemplateBackend()
    records, stats = generate_text(["a red car", "a blue boat"], backend,
                                   TextOptions(moderation=lambda r: "car" not in r.caption))
    assert [r.caption for r in records] == ["a blue boat"] and stats.blocked == 1


def test_template_backend_is_deterministic_and_well_formed():
    captions = ["a red circle on a white background", "a cat sleeping on a sofa", "mountains"]
    first, _ = generate_text(captions, TemplateBackend(), TextOptions(seed=1))
    again, _ = generate_text(captions, TemplateBackend(), TextOptions(seed=1))
    assert first == again and len(first) == 3
    for r in first:
        assert r.output != r.caption and r.edit
    assert all(parse_completion(TemplateBackend().complete(["a red circle"], [s])[0]) for s in range(20))


def test_read_captions_from_txt_jsonl_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "c.txt").write_text("a red circle\n\n a cat \n")
    assert read_captions(tmp_path / "c.txt") == ["a red circle", "a cat"]
    (tmp_path / "c.jsonl").write_text('{"input": "one"}\n{"input": "two"}\n')
    assert read_captions(tmp_path / "c.jsonl") == ["one", "two"]
    (tmp_path / "t.jsonl").write_text('{"TEXT": "x"}\n')
    with pytest.raises(BadData, match="caption column"):
        read_captions(tmp_path / "t.jsonl")
    assert read_captions(tmp_path / "t.jsonl", column="TEXT") == ["x"]
    pq.write_table(pa.table({"caption": ["p", "q", "r"], "n": [1, 2, 3]}), tmp_path / "c.parquet")
    assert read_captions(tmp_path / "c.parquet", limit=2) == ["p", "q"]
    with pytest.raises(BadData):
        read_captions(tmp_path / "missing.txt")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(BadData, match=":1: not valid JSON"):
        read_captions(tmp_path / "bad.jsonl")


def test_read_captions_from_a_hf_dataset_folder(tmp_path):
    import datasets

    from ip2p.datagen.text import read_hf_captions

    datasets.Dataset.from_dict({"text": ["a b", "c d"]}).to_parquet(str(tmp_path / "ds" / "train.parquet"))
    assert read_hf_captions(str(tmp_path / "ds"), column="text") == ["a b", "c d"]
    with pytest.raises(BadData):
        read_hf_captions(str(tmp_path / "nope"), column="text")


def test_prompts_file_reads_input_as_caption(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"input": "a cat", "edit": "make it a dog", "output": "a dog", "url": "u"}\n')
    assert read_prompts(path) == [{"caption": "a cat", "edit": "make it a dog", "output": "a dog", "url": "u"}]
    write_prompts([EditRecord("a", "b", "c")], path)
    assert json.loads(path.read_text()) == {"caption": "a", "edit": "b", "output": "c"}
    path.write_text('{"caption": "a cat", "edit": ""}\n')
    with pytest.raises(BadData, match="edit, output"):
        read_prompts(path)


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible endpoint, served for real on 127.0.0.1


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.requests.append((self.path, body, self.headers.get("Authorization")))
        if server.fail_next:
            server.fail_next -= 1
            self.send_response(503)
            self.end_headers()
            return
        if self.path == "/v1/completions":
            caption = body["prompt"].rsplit("\n\n", 1)[-1].removesuffix("\n##\n")
        elif self.path == "/v1/chat/completions":
            caption = body["messages"][-1]["content"]
        else:
            self.send_response(404)
            self.end_headers()
            return
        if caption.startswith("bad") and server.bad_left:
            server.bad_left -= 1
            text, reason = "I am not sure what to do", "length"
        else:
            text, reason = f" make it blue\n%%\n{caption.replace('red', 'blue')}", "stop"
        choice = {"index": 0, "finish_reason": reason}
        choice.update({"text": text} if "prompt" in body else {"message": {"role": "assistant", "content": text}})
        data = json.dumps({"choices": [choice]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.requests, httpd.fail_next, httpd.bad_left = [], 0, 1
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_openai_backend_over_http(server, api, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    url = f"http://127.0.0.1:{server.server_port}/v1"
    server.fail_next = 1  # one transient 503, retried
    backend = OpenAIBackend(url, "tiny-model", api=api)
    records, stats = generate_text(["a red circle", "bad red square"], backend, TextOptions(seed=4))
    assert [r.to_dict() for r in records] == [
        {"caption": "a red circle", "edit": "make it blue", "output": "a blue circle"},
        {"caption": "bad red square", "edit": "make it blue", "output": "bad blue square"},
    ]
    assert stats.malformed == 1  # the truncated answer was asked for again
    path, body, auth = server.requests[-1]
    assert path == f"/v1/{'chat/completions' if api == 'chat' else 'completions'}"
    assert (body["model"], body["temperature"], body["max_tokens"], body["stop"]) == ("tiny-model", 0.7, 256, ["\nEND"])
    assert auth == "Bearer sk-test"
    if api == "completions":
        assert body["prompt"].startswith(FEW_SHOT[0].caption + "\n##\n") and body["prompt"].endswith("square\n##\n")
    else:
        assert [m["role"] for m in body["messages"][:3]] == ["system", "user", "assistant"]


def test_openai_backend_errors_are_one_line(server):
    with pytest.raises(BadOptions, match="HTTP 404"):
        OpenAIBackend(f"http://127.0.0.1:{server.server_port}/nope", "m").complete(["a"], [0])
    port = server.server_port
    server.shutdown()
    server.server_close()
    with pytest.raises(BadOptions, match="connection refused"):
        OpenAIBackend(f"http://127.0.0.1:{port}/v1", "m").complete(["a"], [0])
    with pytest.raises(BadOptions):
        OpenAIBackend("ftp://x", "m")
    with pytest.raises(BadOptions):
        make_backend("hf")


# ---------------------------------------------------------------------------------------------
# a transformers causal LM, fine-tuned in the paper's format


@pytest.fixture(scope="module")
def lm():
    corpus = [format_prompt(e.caption) + format_completion(e.edit, e.output) for e in EXAMPLES]
    return build_tiny_lm(seed=0, corpus=corpus, vocab_size=300)


def test_loss_only_on_completion_tokens(lm):
    _, tokenizer = lm
    ids, labels = encode_example(tokenizer, EXAMPLES[0])
    prompt_len = len(tokenizer(format_prompt(EXAMPLES[0].caption))["input_ids"])
    assert labels[:prompt_len] == [IGNORE] * prompt_len
    assert labels[prompt_len:] == ids[prompt_len:] and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[prompt_len:], skip_special_tokens=True) == format_completion("make it blue", "a blue circle")


def test_finetuned_lm_writes_edits_through_the_hf_backend(lm, tmp_path):
    model, tokenizer = lm
    before = completion_loss(model, tokenizer, EXAMPLES)
    losses = finetune_text(model, tokenizer, EXAMPLES, FinetuneOptions(epochs=150, learning_rate=1e-2, batch_size=3))
    assert len(losses) == 150
    after = completion_loss(model, tokenizer, EXAMPLES)
    assert after < 0.1 * before, (before, after)
    backend = HFBackend(model, tokenizer, max_tokens=40)
    records, stats = generate_text([e.caption for e in EXAMPLES], backend, TextOptions(retries=3))
    assert {r.caption: r for r in records} == {e.caption: e for e in EXAMPLES}

    # the saved model loads back by path and behaves the same
    model.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    loaded = make_backend("hf", model=str(tmp_path / "lm"), max_tokens=40, device="cpu")
    again, _ = generate_text([EXAMPLES[1].caption], loaded, TextOptions(retries=3))
    assert again == [EXAMPLES[1]]


def test_examples_file_in_gpt3_format(tmp_path):
    path = tmp_path / "ex.jsonl"
    path.write_text(json.dumps({"prompt": "a red circle\n##\n", "completion": " make it blue\n%%\na blue circle\nEND"}) + "\n")
    assert read_examples(path) == [EXAMPLES[0]]
    path.write_text(json.dumps({"prompt": "a red circle\n##\n", "completion": "oops"}) + "\n")
    with pytest.raises(BadData, match=":1:"):
        read_examples(path)


# ---------------------------------------------------------------------------------------------
# the command line


def _cli(argv):
    from ip2p.cli import Parser, datagen

    parser = Parser(prog="ip2p")
    datagen.register(parser.add_subparsers(dest="command", parser_class=Parser))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_text_and_finetune(tmp_path):
    (tmp_path / "c.txt").write_text("a red circle\na green square\n")
    (tmp_path / "block.txt").write_text("# words\nwatercolor\n")
    out = tmp_path / "prompts.jsonl"
    assert _cli(["datagen", "text", "--captions", str(tmp_path / "c.txt"), "--out", str(out),
                 "--backend", "template", "--blocklist", str(tmp_path / "block.txt")]) == 0
    rows = read_prompts(out)
    assert rows and all("watercolor" not in r["edit"] for r in rows)

    model, tokenizer = build_tiny_lm(seed=1)
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    write_prompts(EXAMPLES, tmp_path / "ex.jsonl")
    assert _cli(["datagen", "finetune-text", "--model", str(tmp_path / "base"), "--examples",
                 str(tmp_path / "ex.jsonl"), "--out", str(tmp_path / "ft"), "--epochs", "2", "--device", "cpu"]) == 0
    assert (tmp_path / "ft" / "model.safetensors").is_file()
    with pytest.raises(BadOptions):
        _cli(["datagen", "text", "--captions", str(tmp_path / "c.txt"), "--out", str(out), "--backend", "openai"])


def test_shapes_world_prompts(tmp_path):
    out = tmp_path / "shapes.jsonl"
    assert _cli(["datagen", "text", "--shapes", "5", "--seed", "3", "--out", str(out)]) == 0
    rows = read_prompts(out)
    assert len(rows) == 5
    from ip2p.shapes import make_example

    first = make_example(3, size=64, split="train")
    assert rows[0] == {"caption": first.caption, "edit": first.instruction, "output": first.output_caption}
