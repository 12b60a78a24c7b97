"""Where ``w2v import hf SRC`` finds a checkpoint: a directory, or a Hub id in the local
Hugging Face cache. Nothing is downloaded: an id that is not in the cache gets the command
that downloads it."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from training.checkpoint import CheckpointError

# owner/name or name, as the Hub spells repository ids.
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def hub_cache_dir() -> Path:
    """The cache huggingface_hub uses: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub
    (read when called, so a changed environment counts)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface")
    return Path(home).expanduser() / "hub"


def resolve_source(source: str | Path, revision: Optional[str] = None) -> Path:
    """A directory as it is (``revision`` must then be unset), or the snapshot folder of a Hub
    id at ``revision`` (a branch, tag or commit; default ``main``) in the local cache."""
    path = Path(source).expanduser()
    if path.is_dir():
        if revision is not None:
            raise CheckpointError(f"{source}: --revision is for Hub ids; this is a directory")
        return path
    text = str(source)
    if path.exists() or not _REPO_ID.match(text) or text.startswith(".") or os.sep in text.replace("/", "", 1):
        raise CheckpointError(f"{source}: not a directory (expected what save_pretrained wrote, or a Hub id "
                              f"such as facebook/wav2vec2-base-960h)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = hub_cache_dir()
    at = f" at revision {revision}" if revision else ""
    try:
        return Path(snapshot_download(text, revision=revision, cache_dir=cache, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError, OSError):
        raise CheckpointError(
            f"{text}{at} is not in the local Hugging Face cache ({cache}); download it first with "
            f"`hf download {text}{' --revision ' + revision if revision else ''}` "
            f"(or `huggingface-cli download {text}`), then run this again"
        ) from None
