"""Weights by name: `torchvision:<Enum>.<NAME>` and `timm:<name>`, fetched by torchvision's and timm's own loaders
(their caches, their hash checks) and converted to mbtasks' layout by importers.py; files as before."""

import contextlib
import difflib
import io
import logging
import socket
import urllib.error
from pathlib import Path
from urllib.parse import urlparse

from ..errors import MbtasksError
from ..io.records import Record, read_weights, save_weights
from .importers import SOURCES, TIMM_NETWORKS, convert_state_dict, import_weights

PREFIXES = ("torchvision:", "timm:")
# What a failed download raises: no route, no name resolution, refused, timed out (URLError is an OSError).
NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError, socket.gaierror)


def is_weights_name(spec: object) -> bool:
    """Whether `spec` names pretrained weights (`torchvision:...`, `timm:...`) rather than a file."""
    return isinstance(spec, str) and spec.startswith(PREFIXES)


def load_weights(spec: str | Path) -> Record:
    """The record and weights of an mbtasks weights file or checkpoint, or of pretrained weights by name."""
    if not is_weights_name(spec):
        return read_weights(spec)
    source, name = spec.split(":", 1)
    return (_torchvision_weights if source == "torchvision" else _timm_weights)(name, spec)


def save_imported(src: str, out: str | Path, source: str | None = None, model: str | None = None) -> Record:
    """`mbtasks weights import`: a torchvision / timm state-dict file (with its source and model), or weights by name
    (whose source and model follow from the name), written as an mbtasks weights file."""
    if not is_weights_name(src):
        if source is None or model is None:
            raise MbtasksError(
                "a state-dict file needs --from and --model (weights by name, e.g. "
                "torchvision:MobileNet_V3_Large_Weights.IMAGENET1K_V1, need neither)",
                src,
            )
        return import_weights(source, src, model, out)
    record = load_weights(src)
    if model is not None and model != record.model:
        raise MbtasksError(f"holds weights of {record.model}, not {model}", src)
    if source is not None and not src.startswith(f"{source}:"):
        raise MbtasksError(f"names weights of {src.split(':')[0]}, not {source}", src)
    save_weights(out, record)
    return record


# ---- torchvision ----


def _torchvision_weights(name: str, spec: str) -> Record:
    import torch
    from torchvision.models import get_model_weights, get_weight

    try:
        weights = get_weight(name)
    except (KeyError, ValueError, AttributeError, TypeError):
        raise MbtasksError(f"torchvision has no weights {name!r}{_closest(name, _torchvision_names())}", spec) from None
    model = next((m for m in SOURCES["torchvision"] if get_model_weights(m) is type(weights)), None)
    if model is None:
        raise MbtasksError(
            f"{type(weights).__name__} are weights of a network mbtasks does not import (it imports "
            f"{', '.join(SOURCES['torchvision'])})",
            spec,
        )
    file = Path(urlparse(weights.url).path).name
    folder = Path(torch.hub.get_dir()) / "checkpoints"

    def fetch() -> dict:
        # torch.hub prints a "Downloading ..." line even with progress=False: output and errors stay what they were.
        with contextlib.redirect_stdout(io.StringIO()):
            return weights.get_state_dict(progress=False, check_hash=True, weights_only=True)

    state = _fetched(fetch, spec, f"cannot download {weights.url}", file, folder)
    record = convert_state_dict("torchvision", state, model, spec)
    record.class_names = list(weights.meta.get("categories") or [])
    if type(weights).__module__.startswith("torchvision.models.detection."):
        # torchvision's COCO detectors predict the COCO category id itself (its list holds "N/A" at unused ids).
        record.category_ids = list(range(len(record.class_names)))
    return record


def _torchvision_names() -> list[str]:
    """Every `Enum.NAME` torchvision knows (DEFAULT included)."""
    from torchvision.models import get_model_weights, list_models

    names = []
    for model in list_models():
        enum = get_model_weights(model)
        names += [f"{enum.__name__}.{member}" for member in [*enum.__members__, "DEFAULT"]]
    return sorted(set(names))


# ---- timm ----


def _timm_weights(name: str, spec: str) -> Record:
    import timm
    from timm.models import get_pretrained_cfg

    try:
        config = get_pretrained_cfg(name)
    except RuntimeError:
        config = None
    if config is None or not config.hf_hub_id:
        raise MbtasksError(f"timm has no pretrained weights {name!r}{_closest(name, timm.list_pretrained())}", spec)
    model = TIMM_NETWORKS.get(config.architecture)
    if model is None:
        raise MbtasksError(
            f"{config.architecture} is a network mbtasks does not import from timm (it imports "
            f"{', '.join(TIMM_NETWORKS)})",
            spec,
        )
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo = config.hf_hub_id
    network = _fetched(
        lambda: _timm_create(name, repo),
        spec,
        f"cannot download {repo} from the Hugging Face Hub (no network)",
        *_timm_place(repo),
        not_cached=(LocalEntryNotFoundError,),
    )
    return convert_state_dict("timm", network.state_dict(), model, spec)


def _timm_create(name: str, repo: str):
    """timm's own create_model(pretrained=True): its Hugging Face download, cache and checks."""
    import timm
    from huggingface_hub import constants, try_to_load_from_cache

    cached = any(
        isinstance(try_to_load_from_cache(repo, file), str) for file in ("model.safetensors", "pytorch_model.bin")
    )
    if not cached and (constants.HF_HUB_OFFLINE or not _resolves(constants.ENDPOINT)):
        # Without a name server the hub client retries for most of a minute before it gives up.
        raise ConnectionError("no network")
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # its retry warnings are not the user's business; the error says it all
    try:
        return timm.create_model(name, pretrained=True)
    finally:
        hub_logger.setLevel(level)


def _timm_place(repo: str) -> tuple[str, Path]:
    """What to copy where so that timm finds the weights in its cache: the hub's folder of the repository."""
    from huggingface_hub import constants

    return f"models--{repo.replace('/', '--')} (from `hf download {repo}` on a machine with network)", Path(
        constants.HF_HUB_CACHE
    )


def _resolves(url: str) -> bool:
    try:
        socket.getaddrinfo(urlparse(url).hostname, 443)
        return True
    except (socket.gaierror, UnicodeError):
        return False


# ---- shared ----


def _fetched(fetch, spec: str, problem: str, file: str, folder: Path, not_cached: tuple = ()):
    """fetch(), its failures as one line: a download that cannot happen names the file and where placing it works."""
    try:
        return fetch()
    except (*NETWORK_ERRORS, *not_cached):
        raise MbtasksError(f"{problem}: place {file} in {folder}", spec) from None
    except RuntimeError as error:  # torch.hub's hash check, or a cached file that is not a state dict
        raise MbtasksError(f"{' '.join(str(error).split())[:300]} (the file in {folder})", spec) from None


def _closest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=4, cutoff=0.6)
    return f"; closest: {', '.join(close)}" if close else ""
