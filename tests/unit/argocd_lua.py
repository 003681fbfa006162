"""Run the chart's Argo CD health check the way Argo CD runs a custom one.

Argo CD (util/lua/lua.go `runLua`) runs health scripts in gopher-lua, a Lua 5.1, and for a check configured in
`argocd-cm` without `useOpenLibs` it opens only the package, base and table libraries (plus a safe os): no
`string` or `math` library, so not even `("x"):sub(1)` works. The resource is passed as the global `obj`,
converted from its JSON form (`decodeValue`: objects and arrays -> tables, every number -> a Lua number, null
-> nil); the script's returned table is read as `{status, message}` and a status outside Argo CD's six is shown
as Unknown, as is any Lua error.

Here: lupa's Lua 5.1, the script in an environment holding only base and table functions, strings stripped of
their metatable while it runs. So a script that passes here does not depend on a library Argo CD lacks.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lupa.lua51 as lua51  # lupa: in the test extra (a missing Lua must fail these tests, not skip them)

SCRIPT_PATH = Path(__file__).resolve().parents[2] / "charts" / "ramp" / "argocd" / "ramprollout-health.lua"
HEALTH_STATUSES = frozenset({"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"})

# Lua 5.1's base library (lbaselib.c), as gopher-lua's OpenBase provides it.
_BASE = (
    "assert", "error", "getmetatable", "ipairs", "next", "pairs", "pcall", "print", "rawequal", "rawget",
    "rawset", "select", "setmetatable", "tonumber", "tostring", "type", "unpack", "xpcall", "_VERSION",
)  # fmt: skip

_SANDBOX = """
function(script, obj, base)
  local env = {table = table, obj = obj}
  for _, name in ipairs(base) do env[name] = _G[name] end
  env._G = env
  local chunk, err = loadstring(script, "=ramprollout-health.lua")
  if not chunk then error(err) end
  setfenv(chunk, env)
  local string_meta = debug.getmetatable("")
  debug.setmetatable("", nil)
  local ok, result = pcall(chunk)
  debug.setmetatable("", string_meta)
  if not ok then error(result) end
  return result
end
"""


class LuaHealthError(RuntimeError):
    """The script raised or returned something Argo CD cannot read (Argo CD would show Unknown)."""


def _to_lua(runtime: Any, value: Any) -> Any:
    """Argo CD's decodeValue: JSON objects and arrays become tables; null becomes nil."""
    if isinstance(value, Mapping):
        table = runtime.table()
        for key, item in value.items():
            if item is not None:
                table[str(key)] = _to_lua(runtime, item)
        return table
    if isinstance(value, list | tuple):
        table = runtime.table()
        index = 1
        for item in value:
            if item is not None:
                table[index] = _to_lua(runtime, item)
                index += 1
        return table
    if isinstance(value, bool | str) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)  # gopher-lua's LNumber is a float64
    raise TypeError(f"not a JSON value: {value!r}")


def argocd_health(obj: Any, script: str | None = None) -> dict[str, str]:
    """The health Argo CD shows for `obj`: {"status": ..., "message": ...}."""
    text = SCRIPT_PATH.read_text() if script is None else script
    runtime = lua51.LuaRuntime(register_eval=False, unpack_returned_tuples=False)
    sandbox = runtime.eval(_SANDBOX)
    base = runtime.table(*_BASE)
    try:
        result = sandbox(text, _to_lua(runtime, obj), base)
    except lua51.LuaError as exc:
        raise LuaHealthError(f"Lua error: {exc}") from exc
    if lua51.lua_type(result) != "table":
        raise LuaHealthError(f"expect table output from Lua script, not {lua51.lua_type(result) or type(result)}")
    status, message = result["status"], result["message"]
    if status not in HEALTH_STATUSES:
        raise LuaHealthError(f"Lua returned an invalid health status: {status!r}")
    if message is not None and not isinstance(message, str):
        raise LuaHealthError(f"message is not a string: {message!r}")
    return {"status": status, "message": message or ""}
