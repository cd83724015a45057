"""The component interfaces plugins implement: data, tokenizer, model, task, metric, trainer."""
