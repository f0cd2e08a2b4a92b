"""Loading plugins from the ``mbp`` entry-point group, each in isolation.

A plugin that fails to import, or fails inside a hook, is reported on stderr in one line and skipped;
everything else keeps working. That holds for ``sys.exit`` and ``KeyboardInterrupt`` raised by the plugin's
code too: only the user's own Ctrl-C stops loading (``mbp.interrupts``). ``MBP_STRICT_PLUGINS=1`` makes
such a failure fatal and ``MBP_DISABLE_PLUGINS=a,b`` skips plugins by entry-point name. A plugin that is
still loading after ``MBP_PLUGIN_TIMEOUT`` seconds (default 60, 0: no limit) ends the command with exit 1
and a line naming it: a hung import cannot be abandoned, and waiting for it forever helps nobody.
"""

from __future__ import annotations

import importlib.metadata as md
import math
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from types import ModuleType, TracebackType
from typing import Any

import pluggy

from mbp import hookspecs
from mbp.components import KINDS, ComponentTable, Kind
from mbp.errors import ConfigError, MbpError, PluginError, stderr_line
from mbp.interrupts import from_user, what_it_did

HOOKS: dict[Kind, str] = {
    "codecs": "mbp_register_codecs",
    "backbones": "mbp_register_backbones",
    "heads": "mbp_register_heads",
    "sinks": "mbp_register_sinks",
}


@dataclass(frozen=True)
class PluginInfo:
    name: str
    dist: str
    version: str


@dataclass
class Platform:
    """The plugin manager plus the component table its hooks filled."""

    pm: pluggy.PluginManager
    components: ComponentTable
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    failed: dict[str, PluginInfo] = field(default_factory=dict)
    """Distribution and version of each plugin in ``failures``."""
    clash_owners: dict[tuple[Kind, str], list[str]] = field(default_factory=dict)

    def describe(self) -> list[dict[str, Any]]:
        """Each plugin with what it registered, read from the component table (never a hand-kept list),
        and each plugin that failed, with its error."""
        rows = []
        everyone = {**self.plugins, **self.failed}
        for name, info in sorted(everyone.items()):
            row: dict[str, Any] = {"name": name, "dist": info.dist, "version": info.version}
            for kind in KINDS:
                row[kind] = self.components.names(kind, plugin=name)
            if name in self.failed:  # only failed rows carry it, so a healthy listing keeps its shape
                row["error"] = self.failures[name]
            rows.append(row)
        return rows


def _env_list(name: str) -> set[str]:
    return {part.strip() for part in os.environ.get(name, "").split(",") if part.strip()}


def strict() -> bool:
    return os.environ.get("MBP_STRICT_PLUGINS", "") not in ("", "0", "false", "no")


def _report(message: str) -> None:
    if strict():
        raise PluginError(message)
    stderr_line(f"mbp: {message}")


def _entry_points() -> list[md.EntryPoint]:
    seen: dict[str, md.EntryPoint] = {}
    for ep in md.entry_points(group=hookspecs.PROJECT):
        seen.setdefault(ep.name, ep)  # an editable and a regular install can list the same plugin twice
    return sorted(seen.values(), key=lambda ep: ep.name)


def _dist_of(ep: md.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown", "unknown"
    return dist.metadata["Name"], dist.version


def new_platform(extra_plugins: dict[str, object] | None = None, *, entry_points: bool = True) -> Platform:
    """Build a platform: load entry points (unless disabled), register ``extra_plugins``, run the hooks.

    Args:
        extra_plugins: name -> plugin object (module or instance), registered directly; tests use this.
        entry_points: whether to load the ``mbp`` entry-point group.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    platform = Platform(pm, ComponentTable())
    platform.components.explain_missing = partial(missing_plugin_hint, platform)
    disabled = _env_list("MBP_DISABLE_PLUGINS")
    candidates: list[tuple[str, Callable[[], object], PluginInfo]] = []
    if entry_points:
        for ep in _entry_points():
            dist, version = _dist_of(ep)
            candidates.append((ep.name, ep.load, PluginInfo(ep.name, dist, version)))
    for name, obj in (extra_plugins or {}).items():
        candidates.append((name, partial(lambda o: o, obj), PluginInfo(name, "local", "0")))
    limit = plugin_timeout()
    for name, load, info in candidates:
        if name in disabled:
            continue
        try:
            with _time_limit(limit, info, "loading"):
                plugin = load()
                pm.register(plugin, name=name)
                pm.check_pending()
        except BaseException as error:  # a broken plugin must never take the platform down
            if from_user(error):
                raise
            if pm.has_plugin(name):
                pm.unregister(name=name)
            platform.failures[name] = _one_line(error)
            platform.failed[name] = info
            _report(f"plugin '{name}' ({info.dist} {info.version}) failed to load: {_one_line(error)}")
            continue
        platform.plugins[name] = info
    for kind, hook_name in HOOKS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            info = platform.plugins.get(impl.plugin_name, PluginInfo(impl.plugin_name, "unknown", "unknown"))
            with _time_limit(limit, info, f"running {hook_name}"):
                _run_hook(platform, kind, impl)
    return platform


def plugin_timeout() -> float | None:
    """Seconds a plugin may take to load (``MBP_PLUGIN_TIMEOUT``, default 60); None: no limit."""
    text = os.environ.get("MBP_PLUGIN_TIMEOUT", "").strip()
    if not text:
        return 60.0
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"MBP_PLUGIN_TIMEOUT={text!r}: expected a number of seconds (0: no limit)")
    return seconds or None


@contextmanager
def _time_limit(seconds: float | None, info: PluginInfo, doing: str) -> Iterator[None]:
    """End the process with one line naming the plugin if the block outlasts ``seconds``. A watchdog
    thread, not an alarm: it fires whatever the main thread is stuck in (a sleep, a lock, native code)."""
    if seconds is None:
        yield
        return
    message = (
        f"mbp: error: plugin '{info.name}' ({info.dist} {info.version}) is still {doing} after "
        f"{seconds:g} s (MBP_PLUGIN_TIMEOUT); set MBP_DISABLE_PLUGINS={info.name} to skip it\n"
    )
    timer = threading.Timer(seconds, _give_up, args=(message,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _give_up(message: str) -> None:
    # straight to the descriptor: the stuck main thread may hold the lock of sys.stderr's buffer
    os.write(2, message.encode())
    os._exit(1)


def _run_hook(platform: Platform, kind: Kind, impl: pluggy.HookImpl) -> None:
    name = impl.plugin_name
    if name in platform.failures:
        return
    staged = ComponentTable()

    def register(comp_name: str, factory: Callable[..., Any], params: Any = None) -> None:
        staged.register(kind, name, comp_name, factory, params)

    try:
        impl.function(register=register)
    except BaseException as error:
        if from_user(error):
            raise
        _fail(platform, name, error)
        return
    for comp in staged.entries[kind].values():
        if not _clashes(platform, kind, name, comp.name):
            platform.components.register(kind, name, comp.name, comp.factory, comp.params)


def _clashes(platform: Platform, kind: Kind, plugin: str, name: str) -> bool:
    """Whether ``name`` is already taken. Two plugins registering one name make it ambiguous for every
    pipeline, so neither gets it; commands that do not need the name keep working."""
    table = platform.components
    taken = table.entries[kind].pop(name, None)
    owners = platform.clash_owners.get((kind, name))
    if owners is None:
        if taken is None:
            return False
        owners = platform.clash_owners[(kind, name)] = [taken.plugin]
    owners.append(plugin)
    described = " and ".join(f"'{p}' ({_dist_text(platform, p)})" for p in owners)
    disable = " or ".join(f"MBP_DISABLE_PLUGINS={p}" for p in owners)
    count = "two" if len(owners) == 2 else str(len(owners))
    message = f"{kind[:-1]} '{name}' is registered by {count} plugins: {described}; set {disable} to keep one"
    table.clashes[kind][name] = message
    _report(message)
    return True


def _dist_text(platform: Platform, plugin: str) -> str:
    info = platform.plugins.get(plugin, PluginInfo(plugin, "unknown", "unknown"))
    return f"{info.dist} {info.version}"


def _fail(platform: Platform, name: str, error: BaseException) -> None:
    info = platform.plugins.pop(name, PluginInfo(name, "unknown", "unknown"))
    platform.failures[name] = _one_line(error)
    platform.failed[name] = info
    for kind in KINDS:  # withdraw whatever the plugin registered before it failed
        for comp_name in platform.components.names(kind, plugin=name):
            del platform.components.entries[kind][comp_name]
    _report(f"plugin '{name}' ({info.dist} {info.version}) failed to load: {_one_line(error)}")


def _one_line(error: BaseException) -> str:
    if not isinstance(error, Exception):
        return what_it_did(error)
    text = f"{type(error).__name__}: {error}" if not isinstance(error, MbpError) else str(error)
    return " ".join(text.split())


_DEFAULT: Platform | None = None


def get_platform() -> Platform:
    """The process-wide platform, loaded from entry points on first use."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = new_platform()
    return _DEFAULT


def missing_plugin_hint(platform: Platform, kind: Kind, name: str) -> str:
    """Explain, for a name nobody registered, which plugins are disabled or failed, or what to install."""
    notes = []
    disabled = sorted(_env_list("MBP_DISABLE_PLUGINS") & {ep.name for ep in _entry_points()})
    if disabled:
        notes.append(f"disabled by MBP_DISABLE_PLUGINS: {', '.join(disabled)}")
    if platform.failures:
        notes.append(f"failed to load: {', '.join(sorted(platform.failures))}")
    if name in {ep.name for ep in _entry_points()}:
        notes.insert(0, f"plugin '{name}' is installed but did not register it")
    where = f" ({'; '.join(notes)})" if notes else ""
    return f"a plugin that registers {kind[:-1]} '{name}' is needed{where}; install or enable it"


def blame(error: BaseException, platform: Platform | None = None) -> str | None:
    """The plugin whose code raised ``error``, as "plugin 'x' (dist 1.0)": the innermost frame of its
    traceback in a module of a plugin or of a component it registered. None where no plugin's code ran
    (or no platform is loaded)."""
    platform = platform or _DEFAULT
    if platform is None:
        return None
    owners = _module_owners(platform)
    tb: TracebackType | None = error.__traceback__
    found = None
    while tb is not None:
        owner = _owner(owners, str(tb.tb_frame.f_globals.get("__name__", "")))
        found = owner or found
        tb = tb.tb_next
    if found is None:
        return None
    info = (
        platform.plugins.get(found) or platform.failed.get(found) or PluginInfo(found, "unknown", "unknown")
    )
    return f"plugin '{found}' ({info.dist} {info.version})"


def _module_owners(platform: Platform) -> dict[str, str]:
    """Module name -> plugin: each plugin's own module and the modules of the factories it registered."""
    owners: dict[str, str] = {}
    for name, plugin in platform.pm.list_name_plugin():
        module = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__module__
        owners[module] = name
    for kind in KINDS:
        for comp in platform.components.entries[kind].values():
            owners.setdefault(str(getattr(comp.factory, "__module__", "")), comp.plugin)
    owners.pop("", None)
    return owners


def _owner(owners: dict[str, str], module: str) -> str | None:
    """The plugin owning ``module`` or the nearest package above it that a plugin owns."""
    while module:
        if module in owners:
            return owners[module]
        module = module.rpartition(".")[0]
    return None
