"""SST-2 as instruction data for the causal-lm recipe, named by `data.preprocess`: each review becomes a
prompt, and its label the response the model learns to write."""

ANSWERS = ("negative", "positive")


def sentiment(row: dict) -> dict:
    return {"prompt": f"Review: {row['sentence'].strip()}\nSentiment:", "response": ANSWERS[row["label"]]}
