"""Weight sync from the learner to the engines, at both ends: one interface (``base``) with one module per backend
(``gloo``, ``nccl``, ``ipc``), the learner's sender (``sender``) and tensor source (``source``), the clients that
reach the engines (``clients``), and the driver's handle that runs a round after each update (``sync``). Never
imports the engine, the learner or the driver; no re-exports, so importing the package loads no vLLM."""
