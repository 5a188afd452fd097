"""`bert-finetune`: a BERT (ours, or any Hugging Face or sentence-transformers BERT folder) fine-
tuned for a task. One module per part, as sentence-transformers keeps one file per loss and per
evaluator:
  - cli.py: the command; data.py: CSV/TSV/JSONL rows and their checks;
  - classify.py: the classification and regression loop (classifier.py: the head; report.py:
    their evaluation reports);
  - embedding.py: the sentence-embedding loop; losses/: its losses (mnrl, cached_mnrl,
    cosent, simcse, matryoshka); evaluation/: its evaluators (similarity, retrieval);
    st_folder.py: the sentence-transformers folder it writes.
"""
