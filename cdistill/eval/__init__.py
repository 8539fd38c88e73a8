"""Judging students: held-out evaluation (``evaluate``) and its metrics (``metrics``), the pairwise LLM judge
(``judge``), and the table and plots of a sweep (``report``)."""
