"""One turn of a conversation: the worker, its prompt, tools, context, LLM client and turn records."""
