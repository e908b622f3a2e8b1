"""Texts on which hooklens's tokenizers are compared with Hugging Face's."""

# Unicode, whitespace runs, numbers, code, contractions, URLs.
COMMON_TEXTS = [
    "Hello world",
    "The capital of France is",
    "  leading spaces and   runs   of whitespace\t\ttabs\n\nnewlines",
    "Unicode: café, naïve, 日本語, emoji 🎉🚀, Ελληνικά, русский",
    "Numbers: 0 1 12 123 1234 12345 3.14159 -42 1e10 1,000,000",
    "def f(x):\n    return {'a': [x**2 for x in range(10)]}  # code",
    "I'm can't won't they'll we've you'd",
    "URLs https://example.com/path?q=1&r=2 and emails a.b@c.org",
]
