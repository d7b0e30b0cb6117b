"""Uploads to the Hugging Face Hub: thin calls into huggingface_hub / datasets with a card we render.

Only the payload (folder layout, card text and metadata) is built here; the network call is a single
call into the library, so everything but the transfer is tested offline.
"""

from __future__ import annotations

import os

# Never uploaded from a pipeline folder: resumable training state, tracker logs, unfinished writes.
HUB_IGNORE_PATTERNS = ["checkpoint-*", ".checkpoint-*", "logs/*", "*.tmp", ".*.tmp"]


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload with diffusers-side",
) -> str:
    """Upload a pipeline folder (weights, configs and its README.md card) to a model repo; return the commit URL."""
    from huggingface_hub import create_repo, upload_folder

    repo = create_repo(repo_id, token=token, private=private, exist_ok=True)
    commit = upload_folder(
        repo_id=repo.repo_id, folder_path=str(folder), commit_message=commit_message,
        ignore_patterns=HUB_IGNORE_PATTERNS, token=token,
    )
    return str(commit)


def create_repo_early(
    repo_id: str, flag: str, token: str | None = None, private: bool = True, repo_type: str | None = None
) -> str:
    """Create (or find) the repo a run will upload to before the run's work, so that an offline machine, a missing
    login or a repo the token may not write fail at once instead of after hours of generation or training.

    Args:
        repo_id: the Hub repository.
        flag: the flag that named it, for the message.
        token: as in `huggingface_hub.create_repo`.
        private (`bool`): create it private (an existing repo keeps its visibility).
        repo_type: ``None`` (a model) or ``"dataset"``.

    Returns:
        `str`: the repo id.

    Raises:
        `ConnectionError`: naming the flag, the repo and the fix.
    """
    from huggingface_hub import create_repo

    try:
        return create_repo(repo_id, token=token, private=private, repo_type=repo_type, exist_ok=True).repo_id
    except Exception as error:  # noqa: BLE001 - offline, no token, no permission: all mean "cannot push there"
        raise ConnectionError(
            f"{flag} {repo_id}: cannot create or reach the repo before the work starts ({type(error).__name__}: {error}); "
            f"connect and log in (`hf auth login`), or drop {flag}."
        ) from None
