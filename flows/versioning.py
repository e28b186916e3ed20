"""Data versions with DVC: cache what a run read and wrote, commit the pipeline, push, restore.

Shared by the Prefect flow and the CLI. A file's DVC version is the md5 of its bytes, the
hash that dvc.lock records and the name of the object in DVC's cache and remotes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aecore.errors import AepipeError
from aecore.io import atomic_dir, atomic_path, data_digest, file_digest
from aecore.layout import Layout

# MLflow tags naming a run's data: the md5 and the path of each versioned file
TAGS = {
    "raw": ("dvc.raw_md5", "aepipe.raw_path"),
    "latents": ("dvc.latents_md5", "aepipe.latents_path"),
}


@dataclass
class Record:
    """What ``record`` did: the tags for MLflow and the warnings for the user."""

    tags: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def git_state(root: Path) -> tuple[str | None, str | None]:
    """Return ``(commit, warning)``: the checked-out commit and what is wrong with the repo.

    Only the project folder counts, and changes to what the pipeline writes itself
    (``dvc.lock``, everything under ``data/``, such as the metrics that git tracks) are
    the run's results, not uncommitted code.
    """
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    if head.returncode != 0:
        return None, f"{root}: not a git repository with a commit; run `git init` and commit"
    outputs = [":(exclude)dvc.lock", ":(exclude)data"]
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *outputs],
        cwd=root,
        capture_output=True,
        text=True,
    )
    if status.stdout.strip():
        return head.stdout.strip(), (
            f"{root}: uncommitted changes to tracked files; the run's git commit does not "
            "describe the code that ran: commit them"
        )
    return head.stdout.strip(), None


def open_repo(root: Path):  # noqa: ANN201 - dvc.repo.Repo, imported lazily
    """Open the DVC repository at ``root``.

    Raises:
        AepipeError: when ``root`` is not a DVC repository.
    """
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Repo(str(root), uninitialized=False)
    except NotDvcRepoError as error:
        message = f"{root}: not a DVC repository; run `dvc init` and commit .dvc/"
        raise AepipeError(message) from error


def cache_file(repo, path: Path, md5: str | None = None) -> str:  # noqa: ANN001
    """Put ``path`` into DVC's local cache (a copy) and return its md5 (``md5`` when known)."""
    from dvc_objects.fs import LocalFileSystem

    md5 = md5 or file_digest(path)
    repo.cache.local.add(str(path), LocalFileSystem(), md5)
    return md5


def cache_folder(repo, folder: Path, digests: Mapping[Path, str]) -> str:  # noqa: ANN001
    """Put DVC's listing of ``folder`` into the cache (its files are cached); return its hash."""
    import tempfile

    from dvc_objects.fs import LocalFileSystem

    files = sorted(p for p in folder.rglob("*") if p.is_file())
    listing = [
        {"md5": digests.get(p) or file_digest(p), "relpath": p.relative_to(folder).as_posix()}
        for p in files
    ]
    encoded = json.dumps(listing, sort_keys=True).encode()
    oid = hashlib.md5(encoded, usedforsecurity=False).hexdigest() + ".dir"
    with tempfile.NamedTemporaryFile(suffix=".dir") as handle:
        handle.write(encoded)
        handle.flush()
        repo.cache.local.add(handle.name, LocalFileSystem(), oid)
    return oid


def push(repo, md5s: list[str]) -> str | None:  # noqa: ANN001
    """Push cached objects to the default remote; return a warning when that fails."""
    from dvc.exceptions import DvcException
    from dvc_data.hashfile.hash_info import HashInfo

    try:
        result = repo.cloud.push([HashInfo("md5", md5) for md5 in md5s])
    except DvcException as error:
        return f"data not pushed to the DVC remote ({error}); the cache keeps it: `dvc push` later"
    if result.failed:
        return f"{len(result.failed)} files not pushed to the DVC remote; retry with `dvc push`"
    return None


def check_outputs(root: Path, layout: Layout) -> None:
    """Refuse to overwrite a stage output that was edited by hand.

    A file is the pipeline's own when its size and modification time are those the
    journal recorded after the stage that wrote it (a crashed run's outputs), or when
    its bytes are in DVC's cache (every finished run and every `dvc commit` puts them
    there). Outside a DVC repository, nothing is checked.
    """
    if not (root / ".dvc").is_dir():
        return
    written = read_journal(layout)
    unknown = [p for p in layout.stage_files() if written.get(journal_key(layout, p)) != stat(p)]
    if not unknown:
        return
    with open_repo(root) as repo:
        for path in unknown:
            if not Path(repo.cache.local.oid_to_path(file_digest(path))).exists():
                message = (
                    f"{path.relative_to(root)}: changed since the last run and not in DVC's "
                    "cache; keep it with `dvc commit`, or discard it with `dvc checkout`"
                )
                raise AepipeError(message)


def stat(path: Path) -> list[int]:
    """What tells a file's version without reading it: size and modification time (ns)."""
    info = path.stat()
    return [info.st_size, info.st_mtime_ns]


def journal_key(layout: Layout, path: Path) -> str:
    """A file's name in the journal: its path under data/."""
    return path.relative_to(layout.data).as_posix()


def read_journal(layout: Layout) -> dict[str, list[int]]:
    """``{path: [size, mtime_ns]}`` of the outputs the pipeline wrote last."""
    try:
        return json.loads(layout.journal.read_text())
    except (OSError, ValueError):
        return {}


def journal(layout: Layout) -> None:
    """Record the stage outputs as the pipeline's own; call it after every stage.

    Outputs were checked when the run began, so what is there now is the run's.
    """
    from aecore.io import write_json

    write_json({journal_key(layout, p): stat(p) for p in layout.stage_files()}, layout.journal)


def data_tags(
    root: Path, layout: Layout, table: Path, digests: Mapping[Path, str] | None = None
) -> dict[str, str]:
    """The md5 and the project-relative path of the raw input and the latent table.

    ``table`` is the run's partition (``model=<version>/batch=train``); ``digests`` holds
    md5s already computed (when the files were cached), read once.
    """
    tags = {}
    for name, path in (("raw", layout.raw), ("latents", table)):
        md5_tag, path_tag = TAGS[name]
        tags[md5_tag] = (digests or {}).get(path) or data_digest(path)
        tags[path_tag] = str(path.relative_to(root))
    return tags


def exported_md5(layout: Layout, table: Path) -> str | None:
    """The md5 that the export stage recorded for ``table``, so it is not read again."""
    if not layout.export_record.exists():
        return None
    record = json.loads(layout.export_record.read_text())
    return record["md5"] if layout.data / record["partition"] == table else None


def describe(
    root: Path, layout: Layout, table: Path, digests: Mapping[Path, str] | None = None
) -> Record:
    """Tags naming a run's code and data: git commit, md5 and path of input and table."""
    result = Record(tags=data_tags(root, layout, table, digests))
    commit, problem = git_state(root)
    if commit:
        result.tags["mlflow.source.git.commit"] = commit
    if problem:
        result.warnings.append(problem)
        result.tags["aepipe.git_dirty"] = "true" if commit else "no-git"
    return result


def record(root: Path, layout: Layout, table: Path, pipeline_matches: bool) -> Record:
    """Cache a finished run's files (input, outputs, latent table); commit the pipeline; push.

    Args:
        root: the project (git + DVC repository).
        layout: the run's files.
        table: the run's latent partition.
        pipeline_matches: the run used params.yaml unchanged, so its outputs are the
            dvc.yaml pipeline's; they are then committed to dvc.lock (`dvc status` clean).

    Returns:
        The MLflow tags (md5 and path of each file, git commit) and any warnings. A missing
        git or DVC repository, or an unreachable remote, warns and loses nothing.
    """
    try:
        repo = open_repo(root)
    except AepipeError as error:
        result = describe(root, layout, table)
        result.warnings.append(f"{error}; data are not versioned")
        return result
    with repo, contextlib.chdir(root):  # DVC resolves some paths against the cwd
        digests = {path: cache_file(repo, path) for path in layout.stage_files()}
        digests[table] = cache_file(repo, table, exported_md5(layout, table))
        digests[layout.raw] = cache_folder(repo, layout.raw, digests)
        if pipeline_matches:
            repo.commit(None, force=True)
        warning = push(repo, list(digests.values()))
    result = describe(root, layout, table, digests)
    if warning:
        result.warnings.append(warning)
    result.tags["aepipe.dvc_pushed"] = "false" if warning else "true"
    return result


def restore(root: Path, tags: dict[str, str]) -> list[Path]:
    """Put back the raw input and latent table a run recorded, byte for byte.

    Objects missing from the local cache are pulled from the DVC remote. A current file
    that differs is cached first, so restoring never loses data.

    Returns:
        The restored paths.
    """
    from dvc_data.hashfile.hash_info import HashInfo

    repo = open_repo(root)
    restored = []
    with repo, contextlib.chdir(root):
        for md5_tag, path_tag in TAGS.values():
            if md5_tag not in tags:
                message = f"the run has no {md5_tag} tag: it was not versioned"
                raise AepipeError(message)
            md5, path = tags[md5_tag], root / tags[path_tag]
            if not path.resolve().is_relative_to((root / "data").resolve()):
                message = f"{tags[path_tag]}: outside data/, refusing to write there"
                raise AepipeError(message)
            source = Path(repo.cache.local.oid_to_path(md5))
            if not source.exists():
                result = repo.cloud.pull([HashInfo("md5", md5)])
                if result.failed or not source.exists():
                    message = (
                        f"{tags[path_tag]}: version {md5} is neither in the cache nor on the remote"
                    )
                    raise AepipeError(message)
            if md5.endswith(".dir"):
                restore_folder(repo, source, path)
            else:
                if path.exists() and file_digest(path) != md5:
                    cache_file(repo, path)  # keep what is there now
                with atomic_path(path) as temporary:
                    shutil.copyfile(source, temporary)
            restored.append(path)
    return restored


def restore_folder(repo, listing: Path, folder: Path) -> None:  # noqa: ANN001
    """Put back the files of a folder from DVC's listing ``listing``; keep what is there now."""
    from dvc_data.hashfile.hash_info import HashInfo

    if folder.is_dir():
        for path in folder.rglob("*"):
            if path.is_file():
                cache_file(repo, path)
    entries = json.loads(listing.read_text())
    missing = [
        e["md5"] for e in entries if not Path(repo.cache.local.oid_to_path(e["md5"])).exists()
    ]
    if missing:
        result = repo.cloud.pull([HashInfo("md5", md5) for md5 in missing])
        if result.failed:
            message = (
                f"{folder}: {len(result.failed)} files are neither in the cache nor on the remote"
            )
            raise AepipeError(message)
    with atomic_dir(folder) as temporary:
        for entry in entries:
            target = temporary / entry["relpath"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(repo.cache.local.oid_to_path(entry["md5"]), target)
