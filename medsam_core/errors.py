"""One exception family for everything a user can get wrong.

Callers (CLI, workers, REST) catch ``MedsamError`` and show its message as is,
so every message must say what is wrong and what to do about it.
"""


class MedsamError(ValueError):
    """Base for errors caused by input, not by a bug."""


class InvalidImageError(MedsamError):
    """An image file or array that cannot be segmented."""


class CheckpointError(MedsamError):
    """A checkpoint that is missing, unreadable or made for another model family."""


class PromptError(MedsamError):
    """A box or point prompt that does not fit the image."""


class UnknownModelError(MedsamError):
    """A model family name that the registry does not know."""


def invalid_file(path: str, problem: str) -> InvalidImageError:
    """Every reader's refusal names the file first, so a message alone says which upload to fix."""
    return InvalidImageError(f"{path}: {problem}")
