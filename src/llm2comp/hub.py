"""Is a Hugging Face Hub repository usable from here? One quick answer, so that a missing or offline name fails
at once with our message instead of the hub client's retries and a traceback about huggingface.co."""

from __future__ import annotations

import os


def hub_offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_problem(repo_id: str, repo_type: str = "model", cached_file: str | None = "config.json") -> str | None:
    """None when `repo_id` is in the local cache or the hub knows it; else why not, in a few words."""
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if cached_file and isinstance(huggingface_hub.try_to_load_from_cache(repo_id, cached_file, repo_type=repo_type), str):
        return None
    if hub_offline():
        return "not in the local cache, and HF_HUB_OFFLINE is set"
    info = huggingface_hub.model_info if repo_type == "model" else huggingface_hub.dataset_info
    try:
        info(repo_id, timeout=5)
    except GatedRepoError:
        return None  # exists; the download says what access it needs
    except RepositoryNotFoundError:
        return f"no such {repo_type} on the Hugging Face Hub (private ones need `hf auth login`)"
    except HfHubHTTPError:
        return None  # the hub answered; let the download report its own error
    except Exception as exc:  # no network, DNS, timeout
        return f"not in the local cache, and the Hugging Face Hub is unreachable ({type(exc).__name__})"
    return None
