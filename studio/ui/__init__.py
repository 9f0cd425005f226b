"""The Gradio app. No module here imports torch: tabs call functions in studio/ that the CLI calls too."""
