"""Using a model: the terminal chat (`serve.chat`), the OpenAI-compatible server, the web page and its feedback."""
