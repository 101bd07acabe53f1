"""Finding a run's model: ``model.path`` as a local directory the engines and the learner can load.

Runs in the driver (and in ``rlvr-temp eval`` / ``export``), before any actor starts; the actors get the returned
path. Three forms: ``tiny`` is the embedded model (rlvr_temp.data.tiny_model, built and cached on first use); an
existing directory is taken as it is; otherwise a Hugging Face hub id (``Qwen/Qwen2.5-1.5B-Instruct``) resolves to
its snapshot directory in the hub's cache (``huggingface_hub.snapshot_download``: downloaded when online, the cached
snapshot with ``HF_HUB_OFFLINE=1``). Not cached while offline -> one line naming the id and the cache directory.

Left out: hub revisions other than the default branch; hub datasets are read in rlvr_temp.data.sources.
"""

from __future__ import annotations

import re
from pathlib import Path

from rlvr_temp.data.tiny_model import ensure_tiny_model

#: a hub repository id, ``org/name``
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_model_dir(repo_id: str) -> str:
    """The snapshot directory of hub model ``repo_id`` (downloaded when online; from the cache when offline).

    Raises FileNotFoundError in one line naming the id and the cache directory when it is neither cached nor
    reachable (or does not exist / is gated)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    where = f"model.path {repo_id!r}: not in the Hugging Face cache {constants.HF_HUB_CACHE}"
    try:
        return snapshot_download(repo_id)
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise FileNotFoundError(
                f"{where} and HF_HUB_OFFLINE is set (download it first: `hf download {repo_id}`, or unset "
                "HF_HUB_OFFLINE)"
            ) from None
        raise FileNotFoundError(f"{where} and the hub is not reachable") from None
    except HfHubHTTPError as exc:  # no such repository, gated, private without a token
        raise FileNotFoundError(f"model.path {repo_id!r}: {str(exc).splitlines()[0]}") from None


def resolve_model(path: str) -> str:
    """The local directory of ``model.path``: ``tiny`` -> the embedded model (built if missing); an existing directory
    as it is; otherwise a Hugging Face hub id (``Qwen/Qwen2.5-1.5B-Instruct``) -> its snapshot in the hub's cache
    (:func:`hub_model_dir`: downloaded when online, the cached one with ``HF_HUB_OFFLINE=1``).

    The actors get the returned path, so on a cluster the hub cache (``HF_HOME`` / ``HF_HUB_CACHE``) must be at the
    same path on every node: shared storage, or the same snapshot downloaded on each (docs/cluster.md)."""
    if path == "tiny":
        return str(ensure_tiny_model())
    if Path(path).expanduser().is_dir():
        return str(Path(path).expanduser())
    if not HUB_ID.match(path):
        raise FileNotFoundError(f"model.path {path!r}: no such directory, and not a Hugging Face hub id (org/name)")
    return hub_model_dir(path)
