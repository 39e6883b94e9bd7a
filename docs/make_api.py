"""Writes docs/api.md, the Python API reference, from the signatures and docstrings of vaezoo's public names:
run `python docs/make_api.py` after changing one. tests/test_api_reference.py fails while the page differs
from what this script writes.

Standard library only. It imports vaezoo (and so torch) but none of the optional extras, and its output is
the same on any machine: no paths, no memory addresses, sets sorted."""

from __future__ import annotations

import ast
import inspect
import io
import re
import sys
import textwrap
import tokenize
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from types import MappingProxyType, ModuleType

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "api.md"

INTRO = """\
# Python API reference

<!-- Written by docs/make_api.py from the docstrings: do not edit by hand. Run `python docs/make_api.py`
after changing a public name or its docstring; tests/test_api_reference.py checks that this page is current. -->

Every public name of vaezoo: the `vaezoo` package (`vaezoo.__all__`), what model families use of
`vaezoo.components`, the errors of `vaezoo.errors`, the conformance checks of `vaezoo.testing` and the hooks a
plugin implements, each with its signature and its docstring. Other modules are internal. The command line is
in [cli.md](cli.md); how to write a plugin, with examples, in [plugins.md](plugins.md). Images are
`(B, C, H, W)` floats in [0, 1] unless a name says otherwise.

- [The `vaezoo` package](#the-vaezoo-package)
- [For model families: `vaezoo.components`](#for-model-families-vaezoocomponents)
- [Errors: `vaezoo.errors`](#errors-vaezooerrors)
- [Conformance checks: `vaezoo.testing`](#conformance-checks-vaezootesting)
- [Hooks](#hooks)
"""

# names of vaezoo.__all__ that are neither functions nor classes and have no module of their own to describe
# them: how the page shows each, and what it is (a value of another module, PLUGIN_API, is shown with its
# value and described by that module's docstring)
VALUES = {
    "__version__": (
        "vaezoo.__version__: str",
        'The version of vaezoo, a string such as "0.5.0" (what `vaezoo --version` prints).',
    ),
    "hookimpl": (
        "@vaezoo.hookimpl",
        'The marker of a plugin\'s hook implementations, `pluggy.HookimplMarker("vaezoo")`: decorate each hook\n'
        "function of the module that the plugin's entry point names with it (the hooks are listed under\n"
        "[Hooks](#hooks)).",
    ),
}

# what a model family uses of vaezoo.components besides the classes of vaezoo.__all__ (docs/plugins.md)
FAMILY_HELPERS = ("ParamGroup", "implements")

ADDRESS = re.compile(r" at 0x[0-9A-Fa-f]+")


class _Text(str):
    """Text that `inspect` shows as it is (an annotation or a default, without quotes)."""

    def __repr__(self) -> str:
        return str(self)


def stable_repr(value: object) -> str:
    """`repr(value)` the same on every machine: sets sorted, read-only mappings as dicts, no addresses."""
    if isinstance(value, (set, frozenset)):
        items = ", ".join(sorted(stable_repr(item) for item in value))
        if isinstance(value, frozenset):
            return f"frozenset({{{items}}})" if items else "frozenset()"
        return f"{{{items}}}" if items else "set()"
    if isinstance(value, MappingProxyType):
        return stable_repr(dict(value))
    return ADDRESS.sub("", repr(value))


def own_doc(obj: object) -> str:
    """The docstring `obj` has itself, cleaned ("" when it has none: an inherited one, torch's say, is not used)."""
    raw = vars(obj).get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    return inspect.cleandoc(raw) if isinstance(raw, str) else ""


def _annotation(annotation: object) -> object:
    if annotation is inspect.Parameter.empty:
        return annotation
    return _Text(annotation if isinstance(annotation, str) else inspect.formatannotation(annotation))


WIDTH = 100  # a signature longer than this shows one parameter a line


def signature(function: Callable[..., object], name: str, *, prefix: str = "") -> str:
    """`prefix name(parameters) -> annotation` as the source writes it, one parameter a line when long."""
    sig = inspect.signature(function)
    parameters = list(sig.parameters.values())
    shown = []
    for index, param in enumerate(parameters):
        before = parameters[index - 1].kind if index else None
        after = parameters[index + 1].kind if index + 1 < len(parameters) else None
        if param.kind is param.KEYWORD_ONLY and before not in (param.KEYWORD_ONLY, param.VAR_POSITIONAL):
            shown.append("*")
        default = param.empty if param.default is param.empty else _Text(stable_repr(param.default))
        shown.append(str(param.replace(annotation=_annotation(param.annotation), default=default)))
        if param.kind is param.POSITIONAL_ONLY and after is not param.POSITIONAL_ONLY:
            shown.append("/")
    returns = _annotation(sig.return_annotation)
    tail = "" if returns is inspect.Parameter.empty else f" -> {returns}"
    line = f"{prefix}{name}({', '.join(shown)}){tail}"
    if len(line) <= WIDTH:
        return line
    return f"{prefix}{name}(\n" + "".join(f"    {part},\n" for part in shown) + f"){tail}"


def class_name(cls: type, here: ModuleType | None = None) -> str:
    """How the page names a base class: `vaezoo.X` for a public name, plain within its own module."""
    import vaezoo

    if cls.__module__ == "builtins" or (here is not None and cls.__module__ == here.__name__):
        return cls.__qualname__
    if cls.__module__.startswith("vaezoo"):
        public = cls.__name__ in vaezoo.__all__ and getattr(vaezoo, cls.__name__) is cls
        return f"vaezoo.{cls.__name__}" if public else f"{cls.__module__}.{cls.__qualname__}"
    if cls.__module__.startswith("torch.nn."):
        return f"torch.nn.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass
class Attribute:
    """A public attribute that a class body assigns or annotates, with the comments the source gives it."""

    declaration: str
    comment: str
    caption: str = ""  # a comment block standing alone above it (a blank line between): a group's heading


def class_attributes(cls: type) -> list[Attribute]:
    """The public attributes of `cls`'s own body, in source order."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    comments: dict[int, str] = {}  # line -> comment text, of comments that are the whole line
    trailing: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            text = token.string.lstrip("#").strip()
            (comments if token.line.strip().startswith("#") else trailing)[token.start[0]] = text
    found = []
    for statement in ast.parse(source).body[0].body:
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            name, annotation = statement.target.id, ast.get_source_segment(source, statement.annotation)
        elif (
            isinstance(statement, ast.Assign)
            and len(statement.targets) == 1
            and isinstance(statement.targets[0], ast.Name)
        ):
            name, annotation = statement.targets[0].id, None
        else:
            continue
        if name.startswith("_"):
            continue
        declaration = f"{name}: {annotation}" if annotation else name
        if name in vars(cls):
            declaration += f" = {stable_repr(vars(cls)[name])}"
        elif statement.value is not None:  # a dataclass field(...)
            declaration += f" = {ast.get_source_segment(source, statement.value)}"
        above, line = [], statement.lineno - 1
        while line in comments:
            above.insert(0, comments[line])
            line -= 1
        caption = []
        if not above and line >= 1 and not lines[line - 1].strip():  # a blank line: a caption above it?
            line -= 1
            while line in comments:
                caption.insert(0, comments[line])
                line -= 1
        own = [trailing[n] for n in range(statement.lineno, statement.end_lineno + 1) if n in trailing]
        found.append(Attribute(declaration, " ".join(above + own), " ".join(caption)))
    return found


def methods(cls: type) -> Iterator[tuple[str, object]]:
    """The public methods and properties `cls` defines itself, in source order."""
    for name, member in vars(cls).items():
        if not name.startswith("_") and (inspect.isfunction(member) or isinstance(member, property)):
            yield name, member


@dataclass
class Section:
    """A part of the page: a title, an introduction and the documented names (shown name -> object)."""

    title: str
    intro: str
    names: dict[str, object] = field(default_factory=dict)


def sections() -> list[Section]:
    """What the page documents, in the order it shows it."""
    import vaezoo
    import vaezoo.testing
    from vaezoo import components, errors
    from vaezoo.plugins import hookspecs

    package = Section(
        "The `vaezoo` package",
        "`import vaezoo` imports nothing else: each name loads its module on first use.",
        {f"vaezoo.{name}": getattr(vaezoo, name) for name in vaezoo.__all__},
    )
    error_classes = {
        f"vaezoo.errors.{name}": obj
        for name, obj in vars(errors).items()
        if isinstance(obj, type) and issubclass(obj, Exception) and obj.__module__ == errors.__name__
    }
    checks = {
        f"vaezoo.testing.{name}": obj
        for name, obj in vars(vaezoo.testing).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and obj.__module__ == vaezoo.testing.__name__
    }
    hooks = {name: obj for name, obj in vars(hookspecs).items() if hasattr(obj, "vaezoo_spec")}
    return [
        package,
        Section(
            "For model families: `vaezoo.components`",
            "What a family's `parameter_groups` and `training_step` use besides `vaezoo.Model` (docs/plugins.md,\n"
            "Writing a model family). The `update` that `training_step` receives is a `vaezoo.components.Update`:\n"
            "`update(optimizer name, per-image loss (B,))` steps one optimizer.",
            {f"vaezoo.components.{name}": getattr(components, name) for name in FAMILY_HELPERS},
        ),
        Section("Errors: `vaezoo.errors`", own_doc(errors), error_classes),
        Section("Conformance checks: `vaezoo.testing`", own_doc(vaezoo.testing), checks),
        Section(
            "Hooks",
            own_doc(hookspecs)
            + "\n\nA plugin implements them as functions of these names decorated with `@vaezoo.hookimpl` in the\n"
            "module its entry point names (docs/plugins.md, with an example of each).",
            hooks,
        ),
    ]


def describe(shown: str, obj: object) -> str:
    """The documentation of a name the page shows: its own docstring, or for a value what it is."""
    import vaezoo

    name = shown.rpartition(".")[2]
    if inspect.isfunction(obj) or inspect.isclass(obj):
        return own_doc(obj)
    if name in VALUES:
        return VALUES[name][1]
    module = vaezoo._LAZY.get(name)  # a value such as PLUGIN_API: the docstring of the module that defines it
    return own_doc(import_module(module)) if module else ""


def render_class(shown: str, cls: type, out: list[str]) -> None:
    """Append the documentation of class `cls`, shown as `shown`, to `out`."""
    bases = ", ".join(class_name(base, inspect.getmodule(cls)) for base in cls.__bases__ if base is not object)
    short = shown.rpartition(".")[2]
    header = [f"class {short}({bases}):" if bases else f"class {short}:"]
    if "__init__" in vars(cls):  # its constructor (an inherited one, torch's say, is not shown)
        header.append(textwrap.indent(signature(vars(cls)["__init__"], "__init__", prefix="def "), "    "))
    out += ["```python", *header, "```", "", own_doc(cls), ""]
    if issubclass(cls, Exception) and hasattr(cls, "exit_code"):
        out += [f"Exit code {cls.exit_code}.", ""]
        return
    attributes = class_attributes(cls)
    if attributes:
        out += ["Class attributes:", ""]
        for attribute in attributes:
            if attribute.caption:  # a paragraph before the group's list
                out += [""] * (out[-1] != "") + [f"{attribute.caption[:1].upper()}{attribute.caption[1:]}:", ""]
            text = f": {attribute.comment}" if attribute.comment else ""
            out.append(f"- `{attribute.declaration}`{text}")
        out.append("")
    for name, member in methods(cls):
        if isinstance(member, property):
            returns = _annotation(inspect.signature(member.fget).return_annotation)
            line = f"{short}.{name}" + (f" -> {returns}" if returns is not inspect.Parameter.empty else "")
            out += [f"#### `{short}.{name}`", "", "```python", f"@property\n{line}", "```", "", own_doc(member), ""]
        else:
            out += [f"#### `{short}.{name}`", "", "```python", signature(member, f"{short}.{name}"), "```", ""]
            out += [own_doc(member), ""]


def render() -> str:
    """The text of docs/api.md."""
    parts = sections()
    package = parts[0].names
    out = [INTRO]
    for section in parts:
        out += [f"## {section.title}", "", section.intro, ""]
        for shown, obj in section.names.items():
            out += [f"### `{shown}`", ""]
            public = next((name for name, value in package.items() if value is obj), shown)
            if public != shown:  # vaezoo.errors.VaezooError is vaezoo.VaezooError
                out += [f"The same class as [`{public}`](#{public.replace('.', '').lower()}).", ""]
            elif inspect.isclass(obj):
                render_class(shown, obj, out)
            elif inspect.isfunction(obj):
                out += ["```python", signature(obj, shown), "```", "", describe(shown, obj), ""]
            else:
                name = shown.rpartition(".")[2]
                value = VALUES[name][0] if name in VALUES else f"{shown} = {stable_repr(obj)}"
                out += ["```python", value, "```", "", describe(shown, obj), ""]
    return "\n".join(out).rstrip("\n") + "\n"


def missing_docs() -> list[str]:
    """The documented names, methods and properties that have no docstring of their own."""
    missing = []
    for section in sections():
        for shown, obj in section.names.items():
            if not describe(shown, obj):
                missing.append(shown)
            if inspect.isclass(obj):
                short = shown.rpartition(".")[2]
                missing += [f"{short}.{name}" for name, member in methods(obj) if not own_doc(member)]
    return missing


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # this checkout's vaezoo, not an installed one
    PAGE.write_text(render(), encoding="utf-8", newline="\n")
    print(f"wrote {PAGE.relative_to(ROOT)}")
