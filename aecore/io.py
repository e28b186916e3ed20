"""All file access: reading sources as record batches, atomic writes, digests."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from aecore.errors import AepipeError

DEMO_SOURCES = ("sklearn:digits",)
FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
}
COMPRESSIONS = (".gz", ".bz2", ".xz")
BATCH_ROWS = 65536  # rows per record batch read from a source
TEXT_BLOCK = 1 << 22  # bytes per CSV/JSON block: types are inferred from the first one
_CONVERSION = re.compile(r"(?:CSV column #(\d+)|Column\((/[^)]*)\))")


def redact_url(source: str) -> str:
    """Hide credentials and query strings in a URL so that it can be logged."""
    redacted = re.sub(r"(?<=://)[^/\s]*@", "***@", source)
    return re.sub(r"\?[^\s'\"]*", "?***", redacted) if "://" in redacted else redacted


_SECRETS: dict[str, str] = {}  # redacted source -> the source itself, in this process only


def hide_secrets(source: str) -> str:
    """The source as it may be stored and shown: credentials and query strings hidden.

    The real source stays in this process's memory, where ``reveal`` finds it; so a URL
    with a password can be handed to a flow, whose parameters Prefect stores, without
    the password.
    """
    shown = redact_url(source)
    if shown != source:
        _SECRETS[shown] = source
    return shown


def reveal(source: str) -> str:
    """The source to open: a hidden one put back, and ``${NAME}`` taken from the environment.

    Raises:
        AepipeError: when a ``${NAME}`` is not set.
    """
    source = _SECRETS.get(source, source)

    def variable(found: re.Match) -> str:
        if found[1] not in os.environ:
            message = f"{redact_url(source)}: environment variable {found[1]} is not set"
            raise AepipeError(message)
        return os.environ[found[1]]

    return re.sub(r"\$\{(\w+)\}", variable, source)


def format_of(path: str) -> str | None:
    """Return ``parquet``, ``csv`` or ``json`` from a file name, or ``None``."""
    name = path.lower()
    for suffix in COMPRESSIONS:
        name = name.removesuffix(suffix)
    return FORMATS.get(Path(name).suffix)


def list_source_files(source: str) -> tuple[object, list[str]]:
    """Expand a file, folder, glob or fsspec URL into ``(filesystem, sorted files)``."""
    import fsspec

    shown = redact_url(source)
    source = reveal(source)
    try:
        fs, path = fsspec.core.url_to_fs(source)
    except (ImportError, ValueError) as error:
        message = f"{shown}: cannot open this source: {first_line(error)}"
        raise AepipeError(message) from None
    try:
        if any(char in path for char in "*?["):
            files = fs.glob(path)
        elif fs.isdir(path):
            files = fs.find(path)
        elif fs.exists(path):
            if not format_of(path):
                message = (
                    f"{shown}: not a CSV, TSV, Parquet or JSONL file (judged by its name: "
                    ".csv, .tsv, .parquet, .jsonl, optionally .gz, .bz2, .xz)"
                )
                raise AepipeError(message)
            return fs, [path]
        else:
            message = f"{shown}: no such file or directory"
            raise AepipeError(message)
    except AepipeError:
        raise
    except Exception as error:  # noqa: BLE001 - HTTP and cloud errors: one line, no headers
        message = f"{shown}: cannot list the source: {first_line(error)}"
        raise AepipeError(message) from None
    files = sorted(f for f in files if format_of(f) and not Path(f).name.startswith((".", "_")))
    if not files:
        message = f"{shown}: no CSV, Parquet or JSONL files found"
        raise AepipeError(message)
    return fs, files


def printable(text: str, limit: int = 160) -> str:
    """``text`` safe for a terminal: control and undecodable characters as ``?``, cut short."""
    shown = "".join(c if c.isprintable() and c != "\ufffd" else "?" for c in text)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def first_line(error: BaseException) -> str:
    """An error's first line, secrets hidden: what a one-line message may show of it."""
    text = str(error).strip()
    return printable(redact_url(text.splitlines()[0] if text else type(error).__name__))


class TypeWidened(Exception):
    """A text file held a value its inferred column type cannot hold; the type was widened."""


class Source:
    """The files of a source read as record batches of one unified schema.

    CSV and JSONL column types are inferred from each file's first block. When a later
    block holds a value that type cannot hold (``1.5`` in an integer column), the column is
    widened (integer to float, anything else to text), ``TypeWidened`` is raised, and the
    caller starts again with ``schema()`` and ``batches()``.
    """

    def __init__(self, source: str, batch_rows: int = BATCH_ROWS) -> None:
        self.shown, self.batch_rows = redact_url(source), batch_rows
        self.source = reveal(source)
        self.widened: dict[str, pa.DataType] = {}
        if source.startswith("sklearn:"):
            self.fs, self.files = None, [source]
        else:
            self.fs, self.files = list_source_files(source)
        self._schema: pa.Schema | None = None
        self._file_schemas: dict[tuple[str, str], pa.Schema] = {}

    def shown_file(self, path: str) -> str:
        """A file's name as errors show it: secrets hidden."""
        if self.fs is None or "://" not in self.source:
            return path
        return redact_url(self.fs.unstrip_protocol(path))  # type: ignore[attr-defined]

    def schema(self) -> pa.Schema:
        """The columns of every file, unified by name (types promoted where they differ)."""
        if self._schema is None:
            schemas = [self._file_schema(path) for path in self.files]
            try:
                schema = pa.unify_schemas(schemas, promote_options="permissive")
            except pa.ArrowException as error:
                message = f"{self.shown}: files do not share a schema: {error}"
                raise AepipeError(message) from None
            self._schema = schema.remove_metadata()
        return self._schema

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Every row, file by file, as record batches of ``schema()``.

        Raises:
            TypeWidened: a column's type was widened; start again.
            AepipeError: naming the file, when one cannot be read.
        """
        schema = self.schema()
        for path in self.files:
            for batch in self.file_batches(path):
                yield conform(batch, schema)

    def widen(self, types: Mapping[str, pa.DataType]) -> None:
        """Read these columns as these types from now on (what ``TypeWidened`` found)."""
        self.widened |= dict(types)
        self._schema = None

    def file_rows(self, path: str) -> int:
        """The rows of one file: from a Parquet file's footer, else by reading it."""
        if self.fs is not None and format_of(path) == "parquet":
            with self._open(path) as handle:
                return self._guard(path, lambda: pq.read_metadata(handle).num_rows)
        return sum(batch.num_rows for batch in self.file_batches(path))

    # -- one file ------------------------------------------------------------------------

    def _file_schema(self, path: str) -> pa.Schema:
        """A file's columns as read, kept so that an error handler never reads it again."""
        if (path, str(self.widened)) in self._file_schemas:
            return self._file_schemas[path, str(self.widened)]
        if self.fs is None:
            schema = demo_table(path).schema
        elif format_of(path) == "parquet":
            with self._open(path) as handle:
                schema = self._guard(path, lambda: pq.read_schema(handle))
        else:
            reader = self._text_reader(path)
            try:
                schema = reader.schema
            finally:
                reader.close()
        repeated = sorted(name for name, count in Counter(schema.names).items() if count > 1)
        if repeated:
            message = f"{self.shown_file(path)}: column {repeated[0]!r} appears more than once"
            raise AepipeError(message)
        self._file_schemas[path, str(self.widened)] = schema
        return schema

    def file_batches(self, path: str) -> Iterator[pa.RecordBatch]:
        """The record batches of one file, as read (``conform`` them to ``schema()``)."""
        if self.fs is None:
            yield from demo_table(path).to_batches(self.batch_rows)
            return
        if format_of(path) == "parquet":
            with self._open(path) as handle:
                file = self._guard(path, lambda: pq.ParquetFile(handle, pre_buffer=False))
                yield from self._guard_iter(path, file.iter_batches(self.batch_rows))
            return
        reader = self._text_reader(path)
        try:
            yield from self._guard_iter(path, reader)
        finally:
            reader.close()

    def _open(self, path: str):  # noqa: ANN202 - a file object of the source's filesystem
        kind = format_of(path)
        try:
            compression = "infer" if kind != "parquet" else None
            return self.fs.open(path, "rb", compression=compression)  # type: ignore[union-attr]
        except Exception as error:  # noqa: BLE001 - HTTP and cloud errors: one line, no headers
            message = f"{self.shown_file(path)}: cannot open: {first_line(error)}"
            raise AepipeError(message) from None

    def _text_reader(self, path: str) -> pa.RecordBatchReader:
        import pyarrow.csv as pcsv
        import pyarrow.json as pjson

        handle = self._open(path)

        def reader() -> pa.RecordBatchReader:
            if format_of(path) == "csv":
                return pcsv.open_csv(
                    handle,
                    read_options=pcsv.ReadOptions(block_size=TEXT_BLOCK),
                    parse_options=pcsv.ParseOptions(
                        delimiter="\t" if ".tsv" in path.lower() else ","
                    ),
                    convert_options=pcsv.ConvertOptions(
                        strings_can_be_null=True,  # "" is missing
                        column_types=self.widened,
                    ),
                )
            explicit = pa.schema(list(self.widened.items())) if self.widened else None
            return pjson.open_json(
                handle,
                read_options=pjson.ReadOptions(block_size=TEXT_BLOCK),
                parse_options=pjson.ParseOptions(
                    explicit_schema=explicit, unexpected_field_behavior="infer"
                ),
            )

        try:
            return self._guard(path, reader)
        except BaseException:
            handle.close()  # the reader never took it
            raise

    def _guard(self, path: str, read):  # noqa: ANN001, ANN202
        try:
            return read()
        except (AepipeError, TypeWidened):
            raise
        except Exception as error:  # noqa: BLE001 - HTTP and cloud errors: one line, no headers
            raise self._read_error(path, error) from None

    def _guard_iter(self, path: str, batches: Iterator[pa.RecordBatch]) -> Iterator:
        try:
            yield from batches
        except (AepipeError, TypeWidened):
            raise
        except Exception as error:  # noqa: BLE001 - HTTP and cloud errors: one line, no headers
            raise self._read_error(path, error) from None

    def _read_error(self, path: str, error: Exception) -> Exception:
        """Widen the column a conversion error names, or say why the file is unreadable."""
        text = str(error).strip()
        found = _CONVERSION.search(text)
        schema = self._file_schemas.get((path, str(self.widened)))
        if found and schema and ("conversion error" in text or "changed from" in text):
            name = schema.names[int(found[1])] if found[1] else found[2].lstrip("/")
            current = self.widened.get(name) or (
                schema.field(name).type if name in schema.names else pa.string()
            )
            widened = pa.float64() if pa.types.is_integer(current) else pa.string()
            if format_of(path) == "json" and pa.types.is_string(widened):
                message = (
                    f"{self.shown_file(path)}: column {name!r} holds both numbers and text; "
                    "quote its values, or give a CSV or Parquet source"
                )
                return AepipeError(message)
            if not pa.types.is_string(current):
                self.widened[name] = widened
                self._schema = None
                return TypeWidened(name)
        if found and found[2] and "changed from number to string" in text:
            message = (
                f"{self.shown_file(path)}: column {found[2].lstrip('/')!r} holds both numbers "
                "and text; quote its values, or give a CSV or Parquet source"
            )
            return AepipeError(message)
        kind = format_of(path) or "file"
        line = self._bad_line(path, kind) if "parse error" in text else None
        if line is not None:
            number, problem = line
            message = f"{self.shown_file(path)}: line {number} {problem}"
            return AepipeError(message)
        reason = printable(text.splitlines()[0] if text else type(error).__name__)
        message = f"{self.shown_file(path)}: cannot read as {kind.upper()}: {redact_url(reason)}"
        return AepipeError(message)

    def _bad_line(self, path: str, kind: str) -> tuple[int, str] | None:
        """The first line of a text file that does not parse, and why (an error's cause).

        Arrow's parse errors count rows within a block and may quote the line's bytes:
        read again, line by line, to name the line as an editor numbers it.
        """
        import codecs
        import csv

        with self._open(path) as handle:
            lines = codecs.getreader("utf-8")(handle, errors="replace")
            if kind == "json":
                for number, text in enumerate(lines, start=1):
                    if text.strip():
                        try:
                            json.loads(text)
                        except ValueError:
                            return number, "is not valid JSON"
                return None
            delimiter = "\t" if ".tsv" in path.lower() else ","
            rows = csv.reader(lines, delimiter=delimiter)
            header = next(rows, [])
            for row in rows:
                if row and len(row) != len(header):
                    problem = f"has {len(row)} fields, the header {len(header)}"
                    return rows.line_num, problem
        return None


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Cast ``batch`` to ``schema``: columns by name, the missing ones all null."""
    position: dict[str, int] = {}
    for i, name in enumerate(batch.schema.names):
        position.setdefault(name, i)  # the first of a repeated name, as before
    arrays = []
    for field in schema:
        if field.name in position:
            column = batch.column(position[field.name])
            arrays.append(column if column.type == field.type else column.cast(field.type))
        else:
            arrays.append(pa.nulls(batch.num_rows, field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def demo_table(name: str) -> pa.Table:
    """A bundled demo dataset as an Arrow table: ``sklearn:digits``."""
    from sklearn.datasets import load_digits

    if name != "sklearn:digits":
        message = f"{name}: unknown demo source; known: {', '.join(DEMO_SOURCES)}"
        raise AepipeError(message)
    return pa.Table.from_pandas(load_digits(as_frame=True).frame, preserve_index=False)


def parquet_files(path: Path) -> list[Path]:
    """The Parquet files of a file or folder, in name order (hidden files left out)."""
    if path.is_file():
        return [path]
    files = sorted(p for p in path.glob("*.parquet") if not p.name.startswith((".", "_")))
    if not files:
        message = f"{path}: no Parquet files; run the stage that writes it first"
        raise AepipeError(message)
    return files


def temporary_prefix(name: str) -> str:
    """The start of a temporary name beside ``name``: a dot (readers skip it), then the pid.

    The pid tells the leftovers of a dead process from the files of a live one.
    """
    return f".{name}.{os.getpid()}-"


LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[^.]+(?P<old>\.old)?\.tmp$")


def is_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep_leftovers(*folders: Path) -> list[Path]:
    """Remove the temporary files and folders that dead processes left under ``folders``.

    A folder that a crash moved aside (``.<name>.<pid>-*.old.tmp``) before its
    replacement was in place goes back where it was. Files of live processes (a
    concurrent scoring) are left alone.

    Returns:
        The paths removed or put back.
    """
    swept = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob(".*.tmp"), key=lambda p: -len(p.parts)):
            found = LEFTOVER.match(path.name)
            if not found or is_alive(int(found["pid"])) or not path.exists():
                continue
            original = path.with_name(found["name"])
            if found["old"] and not original.exists():
                os.replace(path, original)
            elif path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            swept.append(path)
    return swept


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` that replaces it only when the block succeeds.

    The temporary name starts with a dot, which Parquet readers skip. It gets the mode
    a new file gets (the user's umask).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = temporary_prefix(path.name)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    os.chmod(temporary, 0o666 & ~_umask())
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces folder ``path`` when the block succeeds.

    Leftovers of a crashed write beside ``path`` are cleaned up first.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(path.parent)
    prefix = temporary_prefix(path.name)
    temporary = Path(tempfile.mkdtemp(dir=path.parent, prefix=prefix, suffix=".tmp"))
    os.chmod(temporary, 0o777 & ~_umask())
    try:
        yield temporary
        if path.exists():
            old = temporary.with_name(temporary.name.replace(".tmp", ".old.tmp"))
            os.replace(path, old)
            os.replace(temporary, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temporary, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_parquet(
    table: pa.Table,
    path: Path,
    row_group_size: int | None = None,
    use_dictionary: bool | list[str] = True,
) -> Path:
    """Write ``table`` to ``path`` atomically, zstd-compressed."""
    with atomic_path(path) as temporary:
        pq.write_table(
            table,
            temporary,
            compression="zstd",
            row_group_size=row_group_size,
            use_dictionary=use_dictionary,
        )
    return path


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The Parquet paths of a latent table worth a dictionary: text and lists of text.

    Latents, errors, scores and row ids seldom repeat; trying a dictionary on them first
    costs a latent table four fifths of its write time and a third of its bytes.
    """
    lists = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)
    text = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    paths = []
    for field in schema:
        listed = any(is_list(field.type) for is_list in lists)
        kind = field.type.value_type if listed else field.type
        if pa.types.is_dictionary(kind) or any(is_text(kind) for is_text in text):
            paths.append(f"{field.name}.list.element" if listed else field.name)
    return paths


@contextmanager
def reading_state(path: Path, what: str, stage: str, *errors: type[Exception]) -> Iterator[None]:
    """Turn a missing or malformed state file into one ``AepipeError`` that names it.

    ``what`` names the file's content ("normalizer"), ``stage`` the stage that writes it;
    ``errors`` are more exception types that mean "not such a file".
    """
    try:
        yield
    except FileNotFoundError:
        message = f"{path}: {what} not found; run the {stage} stage first"
        raise AepipeError(message) from None
    except (ValueError, KeyError, TypeError, AttributeError, *errors) as error:
        reason = f"no {error}" if isinstance(error, KeyError) else first_line(error)
        message = f"{path}: not a {what} ({reason}); run the {stage} stage again"
        raise AepipeError(message) from None


def write_json(data: Mapping, path: Path) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def data_digest(path: Path) -> str:
    """DVC's version of a file or folder: the md5 of a file, ``<md5>.dir`` of a folder.

    A folder's version is the md5 of DVC's listing of its files (relative path and md5,
    sorted by path), the hash that dvc.lock records for a folder output.
    """
    if path.is_file():
        return file_digest(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    listing = [{"md5": file_digest(p), "relpath": p.relative_to(path).as_posix()} for p in files]
    encoded = json.dumps(listing, sort_keys=True).encode()
    return hashlib.md5(encoded, usedforsecurity=False).hexdigest() + ".dir"


def file_digest(path: Path, algorithm: str = "md5") -> str:
    """Return the hex digest of a file's bytes (md5 is what DVC records for a file)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
