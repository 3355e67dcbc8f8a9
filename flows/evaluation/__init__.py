"""Evaluation: the restoration benchmark (:mod:`.bench` runner over suites, methods, scoring and
tables), the paper's Table 1 tasks, the model card, the native-resolution and size benchmarks, the
scale run and the contact sheets. Reads the restoration core; never imports the pipeline's flow."""
