"""Word-level tags onto sub-word tokens: the first sub-token of a word takes its tag, the rest -100."""

from __future__ import annotations

from typing import Any

IGNORED = -100


def encode_words(examples: dict[str, list], *, tokenizer, words, tags, mapping, max_length) -> dict[str, Any]:
    features = tokenizer(examples[words], is_split_into_words=True, truncation=True, max_length=max_length)
    features["labels"] = []
    for i, word_tags in enumerate(examples[tags]):
        labels, previous = [], None
        for word in features.word_ids(i):
            if word is None or word == previous:
                labels.append(IGNORED)
            else:
                tag = word_tags[word]
                labels.append(mapping[tag] if mapping else tag)
            previous = word
        features["labels"].append(labels)
    return features
