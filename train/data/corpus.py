"""The built-in corpus: real English prose that ships with Python itself.

No download, no files: CPython's language-reference topics (`pydoc_data.topics`,
the text behind `help("for")`) plus the docstrings of the standard library
(modules, classes, methods, functions). About 2 MB of technical English, enough
for a byte-level smoke run to learn words, punctuation and code formatting.

Deterministic for a given Python version and platform: modules come from the
fixed list `sys.stdlib_module_names` (sorted, submodules listed from disk in
sorted order), members are visited in sorted order, and each docstring is kept
only the first time it is seen. Modules that fail to import (platform-specific
ones, optional C extensions missing from a build) are skipped.

Why a subprocess (`python -I -S this_file`): the stdlib as seen from a process
that has imported other packages is not the stdlib. typing_extensions, for one,
replaces functions inside `typing`, which would change the corpus depending on
what was imported first. A fresh isolated interpreter without site-packages sees
only CPython's own modules, and the ~550 imports stay out of the training
process. If no subprocess can be started, the corpus is built in-process.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import inspect
import io
import json
import pkgutil
import subprocess
import sys
import warnings

# Never imported: they print, open windows or browsers, write files, touch terminal
# state on import, or (distutils) resolve to a setuptools copy in site-packages.
_SKIP = frozenset({
    "this", "antigravity", "idlelib", "tkinter", "turtle", "turtledemo", "readline",
    "rlcompleter", "lib2to3", "distutils", "ensurepip", "venv", "test", "pydoc_data",
    "__main__", "__phello__", "__hello__", "xxlimited", "xxlimited_35", "xxsubtype",
})


@functools.lru_cache(maxsize=1)
def builtin_documents() -> list[str]:
    """Topics (one document each, sorted by name) then one document per stdlib module
    bundling its docstrings. Cached: built once per process (~1 s)."""
    try:
        out = subprocess.run([sys.executable, "-I", "-S", __file__], capture_output=True,
                             timeout=300, check=True)
        return json.loads(out.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return _build()        # e.g. an embedded interpreter: same text unless typing was patched


def _build() -> list[str]:
    from pydoc_data.topics import topics
    docs = [f"{name}\n\n{topics[name].strip()}" for name in sorted(topics) if topics[name].strip()]
    seen: set[str] = set()
    for name in _module_names():
        module = _try_import(name)
        if module is not None:
            text = _module_text(module, seen)
            if text:
                docs.append(text)
    return docs


def _module_names() -> list[str]:
    names = []
    for top in sorted(getattr(sys, "stdlib_module_names", ())):
        if top in _SKIP or top.startswith("_") and not _is_pure_python(top):
            continue
        names.append(top)
        module = _try_import(top)
        if module is not None and hasattr(module, "__path__"):
            names.extend(_submodules(module))
    return names


def _is_pure_python(name: str) -> bool:
    # Private pure-Python modules (_pyio, _threading_local, _strptime, ...) carry real docs;
    # private C accelerators duplicate their public module's.
    spec = importlib.util.find_spec(name) if name not in sys.modules else sys.modules[name].__spec__
    return bool(spec and spec.origin and spec.origin.endswith(".py"))


def _submodules(package) -> list[str]:
    out = []
    for info in sorted(pkgutil.iter_modules(package.__path__, package.__name__ + "."),
                       key=lambda i: i.name):
        last = info.name.rsplit(".", 1)[-1]
        if last in _SKIP or "test" in last:
            continue
        out.append(info.name)
        if info.ispkg:
            sub = _try_import(info.name)
            if sub is not None and hasattr(sub, "__path__"):
                out.extend(_submodules(sub))
    return out


def _try_import(name: str):
    if name in sys.modules:
        return sys.modules[name]
    # Quiet: the corpus prints nothing, and deprecated modules warn on import.
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except BaseException:  # noqa: BLE001 -- ImportError, OSError, SystemExit from odd modules
        return None


def _module_text(module, seen: set[str]) -> str:
    """'module NAME' + its docstring, then 'NAME.member' + docstring for what it defines."""
    name = module.__name__
    parts: list[str] = []

    def add(title: str, obj) -> None:
        doc = _own_doc(obj)
        if doc and doc not in seen:       # de-duplicate across the whole corpus
            seen.add(doc)
            parts.append(f"{title}\n{doc}")

    add(f"module {name}", module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # typing.io and friends warn on attribute access
        members = sorted(vars(module).items())
        for attr, obj in members:
            if getattr(obj, "__module__", None) != name:   # defined here, not re-exported
                continue
            if inspect.isclass(obj):
                add(f"{name}.{attr}", obj)
                for meth, member in sorted(vars(obj).items()):
                    if isinstance(member, (staticmethod, classmethod)):
                        member = member.__func__
                    if inspect.isfunction(member) or inspect.ismethoddescriptor(member) \
                            or isinstance(member, property):
                        add(f"{name}.{attr}.{meth}", member)
            elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
                add(f"{name}.{attr}", obj)
    return "\n\n".join(parts)


def _own_doc(obj) -> str:
    # obj.__doc__, not inspect.getdoc: getdoc inherits from base classes (duplicates).
    doc = getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc).strip() if isinstance(doc, str) else ""


if __name__ == "__main__":       # the isolated builder: JSON (ASCII) on stdout
    sys.stdout.write(json.dumps(_build()))
