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
