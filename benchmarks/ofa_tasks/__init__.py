"""OFA's four vision-language tasks (RefCOCO, SNLI-VE, COCO caption, VQAv2) as the harness sees them:
the tokenizer (``tokenizer``), the instruction/target formatting of each task (``formatting``) and
generated smoke data in OFA's tsv formats (``smoke``). The tsv readers live in
``petlbench.benchmarks.datasets.ofa_tsv`` and the metrics in ``petlbench.benchmarks.metrics.ofa``."""
