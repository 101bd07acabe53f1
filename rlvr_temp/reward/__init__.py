"""Scoring, in the driver's process: answer extraction and reward shaping (``answers``), math-verify in a hang-proof
pool of worker processes with hard deadlines (``verify``, ``pool``), and LaTeX notation normalisation
(``notation``). Imports only the core. No re-exports."""
