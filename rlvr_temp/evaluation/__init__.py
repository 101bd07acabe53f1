"""Offline evaluation and comparison, in the CLI's process (``eval`` starts its own engine): avg@k / pass@k / maj@k
on held-out sets (``evaluate``; the estimators in ``stats``), runs and sweeps side by side with confidence intervals
(``runs``, ``compare``, ``report``), and one rollout's tokens coloured by temperature and entropy (``show``).
No re-exports."""
