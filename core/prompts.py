"""The tiny world's prompt format, shared by its tasks, its tokenizer and its models: a question, then
the separator the model answers after."""

SEP = "="


def format_prompt(question: str) -> str:
    """The text a tiny model is asked: the question, then the separator it answers after."""
    return f"{question} {SEP}"
