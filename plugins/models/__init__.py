"""Built-in models: gpt, lstm, textcnn and transformer."""
