"""adapt.testing: pytest fixtures for testing adapt plugins without a download or an install.

Registered as a pytest plugin (entry point group `pytest11`), so installing adapt makes the fixtures available
to any test suite; nothing heavy is imported until a fixture is used.

- `tiny_bert_dir`, `tiny_gpt2_dir`, `tiny_llama_dir`: 2-layer models (hidden size 32) built from a config and
  saved like hub checkpoints, with a word-level tokenizer over the toy vocabulary; they train in milliseconds.
- `toy`: that vocabulary and `toy.rows(n, seed)`, sentences labelled 1 when a positive word occurs.
- `toy_data` (sequence classification), `toy_ner` (token classification), `toy_regression`, `toy_multi_label`,
  `toy_qa` (extractive QA), `toy_sft` (causal LM): {"train": Path, "eval": Path}, small sets that each head learns
  in a few epochs.
- `tiny_recipe`: writes a recipe for the tiny BERT and the toy sequence-classification set (LoRA, 2 epochs,
  fp32) with your changes merged per table, and returns its path; `tiny_recipe.dict(...)` returns the dict.
- `run_recipe(recipe, plugins={"name": obj}, overrides=[...])`: trains in-process, exactly as `adapt run`,
  with plugin objects registered under those names without installing them; returns a `TrainedRun`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

GOOD = ["good", "great", "fine", "superb", "lovely"]
BAD = ["bad", "awful", "poor", "dull", "boring"]
FILLER = [f"w{i}" for i in range(60)]
WORDS = GOOD + BAD + FILLER
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LM_SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<user>", "<assistant>", "Sentiment:", "positive", "negative"]
#: The tiny causal LMs' chat template: `<role> content </s>` per message.
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)
SPLITS = {"train": (192, 1), "eval": (64, 2)}  # rows and seed of each toy split


def toy_rows(n: int, seed: int) -> list[tuple[str, int]]:
    """Sentences of 2-24 words; label 1 when a positive word appears, 0 when a negative one does."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.choices(FILLER, k=rng.randint(1, 23))
        words.insert(rng.randrange(len(words) + 1), rng.choice(GOOD if label else BAD))
        rows.append((" ".join(words), label))
    return rows


def write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _splits(folder: Path, suffix: str, make) -> dict[str, Path]:
    return {split: make(folder / f"{split}{suffix}", *spec) for split, spec in SPLITS.items()}


@pytest.fixture(scope="session")
def toy():
    """The toy vocabulary (`good`, `bad`, `filler`) and `rows(n, seed)`."""
    from types import SimpleNamespace

    return SimpleNamespace(good=GOOD, bad=BAD, filler=FILLER, rows=toy_rows)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT (hidden 32) with a word-level vocabulary, saved like a hub checkpoint."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = {word: i for i, word in enumerate(BERT_SPECIALS + WORDS)}
    BertTokenizer(vocab=vocab).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


def _lm_tokenizer(folder: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(LM_SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return tokenizer


def _tiny_causal_lm(tmp_path_factory, name: str, config_class: str, model_class: str, **config: Any) -> Path:
    """A causal LM from a config, saved with the word-level tokenizer (seeded: the same weights every session)."""
    import torch
    import transformers

    folder = tmp_path_factory.mktemp(name)
    tokenizer = _lm_tokenizer(folder)
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(vocab_size=len(tokenizer), **config))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    """A 2-layer GPT-2 (hidden 32) with a word-level tokenizer that has a chat template."""
    # embeddings (tied to the output layer) large enough that a frozen one can still give confident logits
    return _tiny_causal_lm(
        tmp_path_factory, "tiny-gpt2", "GPT2Config", "GPT2LMHeadModel",
        n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=2, eos_token_id=3, initializer_range=0.2,
    )  # fmt: skip


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A 2-layer LLaMA (hidden 32, grouped-query attention) with the GPT-2 fixture's tokenizer."""
    return _tiny_causal_lm(
        tmp_path_factory, "tiny-llama", "LlamaConfig", "LlamaForCausalLM",
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=64, bos_token_id=2, eos_token_id=3, pad_token_id=0,
    )  # fmt: skip


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> dict[str, Path]:
    """Sequence classification: TSV files with columns `sentence` and `label` (0/1)."""

    def write(path: Path, n: int, seed: int) -> Path:
        path.write_text("sentence\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in toy_rows(n, seed)))
        return path

    return _splits(tmp_path_factory.mktemp("toy-data"), ".tsv", write)


@pytest.fixture(scope="session")
def toy_ner(tmp_path_factory) -> dict[str, Path]:
    """Token classification: JSON lines of `tokens` and `ner_tags`, B-POS / B-NEG on the sentiment word, O elsewhere."""

    def write(path: Path, n: int, seed: int) -> Path:
        rows = []
        for text, _ in toy_rows(n, seed):
            words = text.split()
            tags = ["B-POS" if w in GOOD else "B-NEG" if w in BAD else "O" for w in words]
            rows.append({"tokens": words, "ner_tags": tags})
        return write_jsonl(path, rows)

    return _splits(tmp_path_factory.mktemp("toy-ner"), ".jsonl", write)


@pytest.fixture(scope="session")
def toy_regression(tmp_path_factory) -> dict[str, Path]:
    """Regression: JSON lines of `text` with two targets, `sentiment` (0/1) and `length` (words / 10)."""

    def write(path: Path, n: int, seed: int) -> Path:
        rows = [{"text": t, "sentiment": float(y), "length": len(t.split()) / 10} for t, y in toy_rows(n, seed)]
        return write_jsonl(path, rows)

    return _splits(tmp_path_factory.mktemp("toy-regression"), ".jsonl", write)


def multi_label_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Labels "good" (a positive word is in the sentence) and "long" (more than 5 words): both, either or none."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        good, long = i % 2, i // 2 % 2
        words = rng.choices(FILLER, k=rng.randint(6, 10) if long else rng.randint(1, 4))
        if good:
            words[rng.randrange(len(words))] = rng.choice(GOOD)
        rows.append({"text": " ".join(words), "tags": [name for name, bit in (("good", good), ("long", long)) if bit]})
    return rows


@pytest.fixture(scope="session")
def toy_multi_label(tmp_path_factory) -> dict[str, Path]:
    """Multi-label: JSON lines of `text` and `tags`, a list of "good" and "long"."""
    return _splits(
        tmp_path_factory.mktemp("toy-multi-label"), ".jsonl", lambda p, n, s: write_jsonl(p, multi_label_rows(n, s))
    )


def qa_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """The question "good" about a context of 20-60 filler words with a negative word in it and, three times in
    four, a positive one: the answer is the positive word, in SQuAD's form (none without one)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.choices(FILLER, k=rng.randint(20, 60))
        words.insert(rng.randrange(len(words) + 1), rng.choice(BAD))
        answer = rng.choice(GOOD) if i % 4 else None
        if answer is not None:
            words.insert(rng.randrange(len(words) + 1), answer)
        context = " ".join(words)
        answers = {"text": [], "answer_start": []}
        if answer is not None:
            answers = {"text": [answer], "answer_start": [f" {context} ".index(f" {answer} ")]}
        rows.append({"question": "good", "context": context, "answers": answers})
    return rows


@pytest.fixture(scope="session")
def toy_qa(tmp_path_factory) -> dict[str, Path]:
    """Extractive QA: JSON lines of `question`, `context` (longer than the tiny models' windows) and `answers`
    in SQuAD's form; one question in four has no answer."""
    return _splits(tmp_path_factory.mktemp("toy-qa"), ".jsonl", lambda p, n, s: write_jsonl(p, qa_rows(n, s)))


@pytest.fixture(scope="session")
def toy_sft(tmp_path_factory) -> dict[str, Path]:
    """Causal LM: JSON lines of `prompt` ("... Sentiment:") and `response` ("positive" or "negative")."""

    def write(path: Path, n: int, seed: int) -> Path:
        rows = [
            {"prompt": f"{t} Sentiment:", "response": "positive" if y else "negative"} for t, y in toy_rows(n, seed)
        ]
        return write_jsonl(path, rows)

    folder = tmp_path_factory.mktemp("toy-sft")
    return {"train": write(folder / "train.jsonl", 192, 1), "eval": write(folder / "eval.jsonl", 32, 2)}


def tiny_recipe_dict(model_dir: Path, data: Mapping[str, Path], output: Path) -> dict[str, Any]:
    """LoRA r=4 on the tiny BERT's query/value, sequence classification of the toy set, 2 epochs in fp32."""
    return {
        "model": {"name": str(model_dir)},
        "data": {"train_file": str(data["train"]), "eval_file": str(data["eval"]), "max_length": 32},
        "task": {"head": "sequence-classification", "text_column": "sentence", "label_column": "label"},
        "methods": {"lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"]}},
        "train": {
            "epochs": 2,
            "batch_size": 16,
            "learning_rate": 1e-2,
            "log_every": 2,
            "seed": 7,
            "warmup_ratio": 0.0,
            "precision": "fp32",  # the same arithmetic on every CPU kind ("auto" is bf16 on AMX CPUs)
        },
        "output": {"dir": str(output)},
        # curves.png costs about a second of matplotlib per run, more than a tiny run trains
        "plugins": {"disable": ["plots"]},
    }


@dataclass
class RecipeBuilder:
    """`builder(**changes)` writes the tiny recipe with `changes` merged per table and returns its path;
    `methods`, and a `task` naming another head, replace the recipe's table instead of merging."""

    folder: Path
    base: dict[str, Any]

    def dict(self, **changes: Mapping[str, Any]) -> dict[str, Any]:
        recipe = json.loads(json.dumps(self.base))
        for table, values in changes.items():
            replaces = table == "methods" or (
                table == "task" and values.get("head", recipe["task"]["head"]) != recipe["task"]["head"]
            )
            if replaces or not isinstance(values, Mapping):
                recipe[table] = values
            else:
                recipe.setdefault(table, {}).update(values)
        return recipe

    def __call__(self, name: str = "recipe.toml", **changes: Mapping[str, Any]) -> Path:
        return write_recipe(self.folder / name, self.dict(**changes))


def write_recipe(path: Path, recipe: Mapping[str, Any]) -> Path:
    import tomli_w

    path.write_text(tomli_w.dumps(dict(recipe)))
    return path


@pytest.fixture
def tiny_recipe(tmp_path, tiny_bert_dir, toy_data) -> RecipeBuilder:
    """Recipes for the tiny BERT and the toy set, their run directory `tmp_path / "run"`."""
    return RecipeBuilder(tmp_path, tiny_recipe_dict(tiny_bert_dir, toy_data, tmp_path / "run"))


@dataclass
class TrainedRun:
    """What `run_recipe` returns: the summary, the `Run` (its model trained, still in memory), the run
    directory, and each line of its metrics log (train and eval records)."""

    summary: dict[str, Any]
    run: Any
    output_dir: Path
    logs: list[dict[str, Any]] = field(default_factory=list)

    def train_logs(self) -> list[dict[str, Any]]:
        return [r for r in self.logs if r.get("kind") == "train"]


class _KeepRun:
    """Registered beside the plugins under test to hand the finished `Run` back."""

    run: Any = None

    def adapt_on_train_start(self, run: Any) -> None:
        self.run = run


@pytest.fixture
def run_recipe(tmp_path):
    """`run_recipe(recipe, plugins=None, overrides=())`: train `recipe` (a dict or a TOML path) in this process,
    as `adapt run` does. `plugins` maps names to plugin objects (modules, instances or classes), registered as if
    installed under those names, so a recipe can name them. Installed plugins load as usual; set
    ADAPT_DISABLE_PLUGIN_AUTOLOAD=1 to keep only the built-ins and `plugins`."""
    from adapt.plugin.manager import Catalogue
    from adapt.recipe.loader import load_recipe
    from adapt.train.orchestration import run_recipe as train

    def run(
        recipe: Mapping[str, Any] | str | Path,
        plugins: Mapping[str, Any] | None = None,
        overrides: Sequence[str] = (),
    ) -> TrainedRun:
        path = Path(recipe) if isinstance(recipe, (str, Path)) else write_recipe(tmp_path / "run-recipe.toml", recipe)
        keep = _KeepRun()
        catalogue = Catalogue.discover(extra={**(plugins or {}), "testing-keep-run": keep})
        loaded = load_recipe(path, catalogue.infos, overrides, broken=catalogue.broken)
        summary = train(loaded, catalogue)
        output = Path(loaded.output.dir)
        metrics = output / "metrics.jsonl"
        logs = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
        return TrainedRun(summary, keep.run, output, logs)

    return run
