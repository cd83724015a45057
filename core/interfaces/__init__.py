"""The component interfaces every plugin implements: data, tokenizer, model, task, trainer."""
