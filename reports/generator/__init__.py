"""The monthly report generator: inputs in, figures and checks, Russian Markdown, charts and advice out."""
