"""The extractive-qa head: windows and their labels, offsets back to characters, SQuAD's metric, unanswerable
questions, SQuAD files, and runs of the tiny BERT that learn the toy QA set, predict, evaluate, export, reload
with PEFT and resume bit-exactly after kill -9."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from adapt.commands.cli import main
from adapt.testing import write_jsonl
from adapt_extractive_qa.metrics import QuestionAnsweringMetrics, exact_match, f1_score, normalize_answer
from adapt_extractive_qa.questions import canonical_questions
from adapt_extractive_qa.spans import best_span
from adapt_extractive_qa.windows import CHAR_END, CHAR_START, NULL_POSITION, encode_windows

QA_TASK = {"head": "extractive-qa", "doc_stride": 8, "allow_no_answer": True}
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(autouse=True)
def builtins_only(monkeypatch):
    monkeypatch.setenv("ADAPT_DISABLE_PLUGIN_AUTOLOAD", "1")


def qa_recipe(tiny_recipe, toy_qa, name="recipe.toml", **changes):
    data = {"train_file": str(toy_qa["train"]), "eval_file": str(toy_qa["eval"]), "max_length": 32}
    return tiny_recipe(
        name,
        data={**data, **changes.pop("data", {})},
        task={**QA_TASK, **changes.pop("task", {})},
        **{"methods": {"full": {}}, "train": {"epochs": 12, "learning_rate": 3e-3}, **changes},
    )


def canonical(rows):
    return {
        "question": [r["question"] for r in rows],
        "context": [r["context"] for r in rows],
        "answer_texts": [r["answers"]["text"] for r in rows],
        "answer_starts": [r["answers"]["answer_start"] for r in rows],
    }


# --- windows, offsets, spans ---------------------------------------------------------------------------------


def test_an_answer_cut_by_a_window_edge_is_labelled_in_the_window_that_holds_it_whole(tiny_bert_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    context = " ".join(f"w{i}" for i in range(40))
    start = context.index("w19 w20")
    row = {"question": "good", "context": context, "answers": {"text": ["w19 w20"], "answer_start": [start]}}
    # 16 tokens: [CLS] good [SEP] + 12 context tokens + [SEP]; 4 back per window: words 0-11, 8-19, 16-27, ...
    windows = encode_windows(canonical([row]), [5], tokenizer=tokenizer, max_length=16, doc_stride=4)
    assert windows["example_row"] == [5] * 5  # ... 24-35, 32-39
    labelled = []
    for ids, first, last, starts in zip(
        windows["input_ids"], windows["start_positions"], windows["end_positions"], windows[CHAR_START], strict=True
    ):
        assert starts[:3] == [-1, -1, -1] and starts[-1] == -1  # the question and specials map to no character
        if (first, last) != (NULL_POSITION, NULL_POSITION):
            labelled.append(tokenizer.decode(ids[first : last + 1]))
    assert labelled == ["w19 w20"]  # the second window holds w19 only: it is labelled "no answer"


def test_a_predicted_sub_token_span_maps_back_to_the_context_s_exact_characters():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    context = "Yesterday,  Ms. Ngozi Okonjo-Iweala's team met in Genève (Switzerland)."
    answer = "Okonjo-Iweala"
    answers = {"text": [answer], "answer_start": [context.index(answer)]}
    row = {"question": "Who?", "context": context, "answers": answers}
    window = encode_windows(canonical([row]), [0], tokenizer=tokenizer, max_length=64, doc_stride=16)
    first, last = window["start_positions"][0], window["end_positions"][0]
    assert last - first >= 2  # several sub-tokens, the apostrophe-s after them not part of it
    tokens = len(window["input_ids"][0])
    start_logits, end_logits = torch.zeros(tokens), torch.zeros(tokens)
    start_logits[first], end_logits[last] = 5.0, 5.0
    span = best_span(
        start_logits, end_logits, torch.tensor(window[CHAR_START][0]), torch.tensor(window[CHAR_END][0]),
        n_best=5, max_answer_length=30,
    )
    assert context[span.start : span.end] == answer and span.score == 10.0


def test_a_span_that_ends_before_it_starts_or_is_too_long_is_never_chosen():
    chars = torch.arange(6)
    starts = torch.tensor([0.0, 0, 0, 9, 0, 0])
    ends = torch.tensor([0.0, 8, 0, 0, 0, 7])  # the best end (1) lies before the best start (3)
    span = best_span(starts, ends, chars, chars + 1, n_best=6, max_answer_length=3)
    assert (span.start, span.end) == (3, 6)  # start 3 with end 5 (7), not end 1 (8)
    assert best_span(starts, ends, chars, chars + 1, n_best=6, max_answer_length=2).score == 9.0  # end 5 too far
    outside = torch.full((6,), -1)
    assert best_span(starts, ends, outside, outside, n_best=6, max_answer_length=3) is None


# --- the metric ----------------------------------------------------------------------------------------------


def test_squad_normalisation_exact_match_and_f1_by_hand():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert exact_match("the Eiffel Tower.", "Eiffel tower") == 1.0
    assert f1_score("the cat sat", "a cat sat down") == pytest.approx(0.8)  # P = 2/2, R = 2/3
    assert f1_score("cat cat", "cat") == pytest.approx(2 / 3)  # P = 1/2 (one cat in common), R = 1
    assert f1_score("dog", "cat") == 0.0
    assert f1_score("", "") == 1.0 and f1_score("cat", "") == 0.0 and f1_score("", "cat") == 0.0


def _window(row, start_logits, end_logits, chars):
    n = len(start_logits)
    outputs = SimpleNamespace(start_logits=torch.tensor([start_logits]), end_logits=torch.tensor([end_logits]))
    starts = torch.tensor([[-1] + chars + [-1] * (n - 1 - len(chars))])
    batch = {"example_row": torch.tensor([row]), CHAR_START: starts, CHAR_END: starts + (starts >= 0) * 3}
    return outputs, batch


def test_metrics_take_each_question_s_best_window_across_processes_and_split_no_answers():
    contexts = ["abc def ghi", "abc def ghi"]
    golds = [["def"], []]  # row 1 has no answer

    def metrics(threshold=0.0):
        return QuestionAnsweringMetrics(
            contexts, golds, allow_no_answer=True, null_score_threshold=threshold, n_best=3,
            max_answer_length=5,
        )

    one, two = metrics(), metrics()
    one.update(*_window(0, [0.0, 1, 0, 0], [0.0, 1, 0, 0], [0, 4, 8]))  # "abc", 2 against a null of 0
    two.update(*_window(0, [0.0, 0, 3, 0], [0.0, 0, 3, 0], [0, 4, 8]))  # "def", 6: the better window
    two.update(*_window(1, [2.0, 1, 0, 0], [2.0, 1, 0, 0], [0, 4, 8]))  # null 4 beats "abc" at 2
    one.merge(pickle_round_trip(two))
    assert one.compute() == {
        "exact_match": 1.0, "f1": 1.0, "has_answer_exact_match": 1.0, "has_answer_f1": 1.0, "no_answer_accuracy": 1.0
    }
    lenient = metrics(threshold=5.0)  # no answer only when its score wins by more than 5
    lenient.merge(one)
    assert lenient.answer(1, contexts[1]) == "abc" and lenient.compute()["no_answer_accuracy"] == 0.0


def pickle_round_trip(value):
    import pickle

    return pickle.loads(pickle.dumps(value))  # as the core gathers metrics across processes


# --- data ------------------------------------------------------------------------------------------------------


def _table(**keys):
    from adapt_extractive_qa import QuestionAnsweringTable

    return QuestionAnsweringTable(**keys)


def test_a_squad_json_file_reads_as_its_questions(tmp_path):
    from datasets import load_dataset

    squad = {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{
        "context": "Alice met Bob in Paris.",
        "qas": [
            {"id": "1", "question": "Who met Bob?", "answers": [{"text": "Alice", "answer_start": 0}]},
            {"id": "2", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 17},
                                                           {"text": "in Paris", "answer_start": 14}]},
            {"id": "3", "question": "Who met Carol?", "answers": [], "is_impossible": True,
             "plausible_answers": [{"text": "Bob", "answer_start": 10}]},
        ],
    }]}]}
    (tmp_path / "squad.json").write_text(json.dumps(squad))
    split = load_dataset("json", data_files=str(tmp_path / "squad.json"), split="train")
    questions = canonical_questions(split, "train", _table(allow_no_answer=True))
    assert questions["question"] == ["Who met Bob?", "Where?", "Who met Carol?"]
    assert questions["answer_texts"] == [["Alice"], ["Paris", "in Paris"], []]
    assert questions["answer_starts"] == [[0], [17, 14], []]


def test_plain_answer_text_and_start_columns():
    from datasets import Dataset

    split = Dataset.from_dict({"q": ["Who?", "Where?"], "c": ["Alice met Bob.", "Here."], "a": ["Bob", None],
                               "s": [10, None]})
    table = _table(question_column="q", context_column="c", answers_column="a", answer_start_column="s",
                   allow_no_answer=True)
    questions = canonical_questions(split, "eval", table)
    assert questions["answer_texts"] == [["Bob"], []] and questions["answer_starts"] == [[10], []]


GOOD_ROW = {"question": "Who?", "context": "Alice met Bob.", "answers": {"text": ["Bob"], "answer_start": [10]}}


@pytest.mark.parametrize(
    ("rows", "allow", "message"),
    [
        ([GOOD_ROW, {**GOOD_ROW, "answers": {"text": ["Bob"], "answer_start": [3]}}], True,
         "task.answers_column: row 2 of the train split: answer 'Bob' is not at character 3 of its context "
         "(the context has 'ce ' there)"),
        ([GOOD_ROW, {**GOOD_ROW, "answers": {"text": [], "answer_start": []}}], False,
         "task.allow_no_answer: row 2 of the train split has no answer; set task.allow_no_answer = true"),
        ([GOOD_ROW, {**GOOD_ROW, "context": None}], True,
         "task.context_column: row 2 of the train split has no context"),
        ([{**GOOD_ROW, "answers": "Bob"}], True,
         "task.answers_column: row 1 of the train split has 'Bob' in 'answers'"),
    ],
)
def test_a_row_that_does_not_fit_the_format_is_refused_by_number(rows, allow, message):
    from datasets import Dataset

    from adapt import DataError

    with pytest.raises(DataError) as error:
        canonical_questions(Dataset.from_list(rows), "train", _table(allow_no_answer=allow))
    assert message in str(error.value)


# --- runs ----------------------------------------------------------------------------------------------------


def test_the_head_learns_answers_across_windows_and_predicts_evaluates_exports(tiny_recipe, toy_qa, tmp_path, capsys):
    recipe = qa_recipe(tiny_recipe, toy_qa)
    assert main(["run", str(recipe)]) == 0
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = summary["eval"]
    assert metrics["f1"] > 0.9 and metrics["no_answer_accuracy"] > 0.8 and metrics["has_answer_exact_match"] > 0.9
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == metrics

    context = " ".join(f"w{i}" for i in range(30)) + " boring w3 w4 lovely w7 w8 " + " ".join(["w9"] * 20)
    assert main(["predict", str(run_dir), "--json", "--question", "good", "--context", context]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["answer"] == "lovely" and context[answer["start"] : answer["end"]] == "lovely"
    no_answer = " ".join(["w1"] * 50) + " dull"
    assert main(["predict", str(run_dir), "--json", "--question", "good", "--context", no_answer]) == 0
    assert json.loads(capsys.readouterr().out)["answer"] == ""
    assert main(["predict", str(run_dir), "--question", "good"]) == 2  # --context is missing

    assert main(["export", str(run_dir), str(tmp_path / "export")]) == 0  # a transformers QA model, as trained
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    model = AutoModelForQuestionAnswering.from_pretrained(tmp_path / "export").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "export")
    inputs = tokenizer("good", "w1 w2 boring w3 w4 fine w5", return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    span = inputs["input_ids"][0][outputs.start_logits[0].argmax() : outputs.end_logits[0].argmax() + 1]
    assert tokenizer.decode(span) == "fine"


def test_a_lora_run_s_adapter_reloads_with_peft_and_merges(tiny_recipe, toy_qa, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForQuestionAnswering

    recipe = qa_recipe(
        tiny_recipe, toy_qa, methods={"lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"]}},
        train={"epochs": 1},
    )
    assert main(["plan", str(recipe), "--json"]) == 0  # a QA batch made up for the plan: start and end positions
    assert main(["run", str(recipe)]) == 0
    run_dir = tmp_path / "run"
    base = AutoModelForQuestionAnswering.from_pretrained(tiny_recipe.base["model"]["name"])
    model = PeftModel.from_pretrained(base, run_dir / "adapter").eval()
    merged_dir = tmp_path / "merged"
    assert main(["export", str(run_dir), str(merged_dir), "--merge"]) == 0
    merged = AutoModelForQuestionAnswering.from_pretrained(merged_dir).eval()
    ids = torch.tensor([[2, 5, 3] + list(range(20, 40)) + [3]])
    with torch.no_grad():
        a, b = model(input_ids=ids), merged(input_ids=ids)
        with model.disable_adapter():
            untrained = model(input_ids=ids)
    assert torch.allclose(a.start_logits, b.start_logits, atol=1e-5)
    assert not torch.allclose(a.start_logits, untrained.start_logits, atol=1e-3)  # the adapter and head trained
    assert json.loads((merged_dir / "adapt_export.json").read_text())["check"]["max_abs_logit_diff"] < 1e-4


def test_a_batched_preprocess_makes_rows_of_its_own(tiny_recipe, toy_qa, tmp_path, capsys):
    """data.preprocess_batched: one raw row of words becomes a question per positive word (two here)."""
    rows = [{"words": ["w1", "good", "w2", "dull", "fine"] + ["w3"] * 30} for _ in range(40)]
    train = write_jsonl(tmp_path / "words.jsonl", rows)
    (tmp_path / "make.py").write_text(
        "def questions(batch):\n"
        "    out = {'question': [], 'context': [], 'answers': []}\n"
        "    for words in batch['words']:\n"
        "        context = ' '.join(words)\n"
        "        for word in ('good', 'fine'):\n"
        "            out['question'].append(word)\n"
        "            out['context'].append(context)\n"
        "            out['answers'].append({'text': [word], 'answer_start': [context.index(word)]})\n"
        "    return out\n"
        "def broken(batch):\n"
        "    return {'question': ['q'], 'context': []}\n"
    )
    data = {"train_file": str(train), "eval_file": str(train), "preprocess": f"{tmp_path / 'make.py'}:questions",
            "preprocess_batched": True}
    recipe = qa_recipe(tiny_recipe, toy_qa, data=data, train={"epochs": 1})
    assert main(["check", str(recipe)]) == 0
    assert "data: 80 train rows, 80 eval rows" in capsys.readouterr().out
    broken = {**data, "preprocess": f"{tmp_path / 'make.py'}:broken"}
    broken = qa_recipe(tiny_recipe, toy_qa, "broken.toml", data=broken)
    assert main(["check", str(broken)]) == 2
    assert "must return a dict of equally long lists, one per column" in capsys.readouterr().err
