"""The tiny world's prompt format, shared by its tasks, its tokenizer and its models: a question, then
the separator the model answers after."""

SEP = "="
# English function words of the tiny language, shared by every task's surface forms (not any task's grammar)
FUNCTION_WORDS = ["of", "what", "is", "the", "'s"]


def format_prompt(question: str) -> str:
    """The text a tiny model is asked: the question, then the separator it answers after."""
    return f"{question} {SEP}"
