"""Extractive QA derived from CoNLL-2003, named by `data.preprocess` (batched) in recipes/lora-qa.toml.

Neighbouring sentences are joined into contexts of about 80 words (longer than one 128-token window, so the
window logic is exercised); each sentence gets one question about a person, place or organisation: the first one it
names, found by the sentence's opening words ("Which person does the sentence beginning "Peter Blackburn said"
name first?"). One sentence in four is asked about a kind it does not name (no answer). The answers are the
entity spans with their character offsets into the context."""

import zlib

KINDS = {"PER": "person", "LOC": "place", "ORG": "organisation"}
CONTEXT_WORDS = 80
ANCHOR_WORDS = 4


def _entities(tokens: list[str], tags: list[str]) -> dict[str, tuple[int, int]]:
    """The first entity of each kind: {kind: (first token, one past the last)}; tags are IOB2."""
    found: dict[str, tuple[int, int]] = {}
    for i, tag in enumerate(tags):
        kind = tag[2:]
        if tag.startswith("B-") and kind in KINDS and kind not in found:
            end = i + 1
            while end < len(tags) and tags[end] == f"I-{kind}":
                end += 1
            found[kind] = (i, end)
    return found


def _contexts(sentences: list[list[str]]) -> list[list[int]]:
    """Consecutive sentences grouped until a group has CONTEXT_WORDS words."""
    groups, group, words = [], [], 0
    for index, tokens in enumerate(sentences):
        group.append(index)
        words += len(tokens)
        if words >= CONTEXT_WORDS:
            groups.append(group)
            group, words = [], 0
    return groups + ([group] if group else [])


def questions(batch: dict) -> dict:
    rows = {"question": [], "context": [], "answers": []}
    for group in _contexts(batch["tokens"]):
        sentences = [batch["tokens"][i] for i in group]
        context = " ".join(" ".join(tokens) for tokens in sentences)
        anchors = [" ".join(tokens[:ANCHOR_WORDS]) for tokens in sentences]
        offset = 0  # the character where the sentence starts in the context
        for tokens, index, anchor in zip(sentences, group, anchors, strict=True):
            entities = _entities(tokens, batch["ner_tags"][index])
            draw = zlib.crc32(" ".join(tokens).encode())
            ask_missing = draw % 4 == 0 and len(entities) < len(KINDS)
            if entities and anchors.count(anchor) == 1 and len(tokens) > 1:
                present = sorted(entities)
                absent = sorted(set(KINDS) - set(entities))
                kind = absent[draw % len(absent)] if ask_missing else present[draw % len(present)]
                answers = {"text": [], "answer_start": []}
                if kind in entities:
                    first, end = entities[kind]
                    start = offset + sum(len(t) + 1 for t in tokens[:first])
                    answers = {"text": [" ".join(tokens[first:end])], "answer_start": [start]}
                rows["question"].append(f'Which {KINDS[kind]} does the sentence beginning "{anchor}" name first?')
                rows["context"].append(context)
                rows["answers"].append(answers)
            offset += len(" ".join(tokens)) + 1
    return rows
