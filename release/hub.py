"""The one place the release talks to the Hugging Face Hub.

Every Hub call in release/ goes through :func:`get_api`, so tests (and mirrors) point
the whole release at another server by changing ``HF_ENDPOINT`` (read by
huggingface_hub into ``huggingface_hub.constants.ENDPOINT``) and nothing else.

The token is resolved here (``--token``, then ``HF_TOKEN``, then the stored
``hf auth login``) and handed only to the HfApi client: it is never printed,
logged or written to a file by the release.
"""

from __future__ import annotations

from captioning.errors import UserError

LIBRARY_NAME = "vlm-captioning-toolkit"


def endpoint() -> str:
    """The Hub endpoint in use (``HF_ENDPOINT``, default https://huggingface.co)."""
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def resolve_token(token: str | None = None) -> str | None:
    """``--token``, else ``HF_TOKEN``, else the token stored by ``hf auth login`` (None if none)."""
    if token:
        return token
    from huggingface_hub import get_token

    return get_token()


def ensure_online() -> None:
    """Refuse to start a Hub upload while huggingface_hub is in offline mode."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise UserError("HF_HUB_OFFLINE is set: unset it to push to the Hub, or pass --to-dir DIR to write the "
                        "release folder locally")


def get_api(token: str | None = None, *, require_token: bool = True):
    """An ``HfApi`` for the configured endpoint, authenticated with the resolved token."""
    from huggingface_hub import HfApi

    ensure_online()
    resolved = resolve_token(token)
    if require_token and not resolved:
        raise UserError("no Hugging Face token: pass --token, set HF_TOKEN, or run `hf auth login`")
    return HfApi(endpoint=endpoint(), token=resolved, library_name=LIBRARY_NAME)


def repo_url(repo_id: str, repo_type: str = "model") -> str:
    """The web URL of a repo on the configured endpoint."""
    prefix = {"model": "", "dataset": "datasets/", "space": "spaces/"}[repo_type]
    return f"{endpoint()}/{prefix}{repo_id}"


def check_repo_id(repo_id: str, flag: str = "--repo-id") -> str:
    """``NS/NAME`` as the Hub accepts it, or a UserError saying what is wrong."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not repo_id or repo_id.count("/") != 1:
        raise UserError(f"{flag} {repo_id!r}: expected NAMESPACE/NAME, e.g. my-user/smolvlm-captioner")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise UserError(f"{flag} {repo_id!r}: {str(e).splitlines()[0]}") from e
    return repo_id
