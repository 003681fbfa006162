-- Argo CD health check for ramp.dev/RampRollout (resource.customizations.health.ramp.dev_RampRollout).
-- Uses only Lua 5.1 base functions: Argo CD runs custom health checks without the string/math libraries
-- unless useOpenLibs is set. It never raises: a Lua error would show the resource as Unknown.
local hs = {status = "Progressing", message = "waiting for the controller to report status"}

local function field(t, key)
  if type(t) == "table" then
    return t[key]
  end
  return nil
end

local metadata = field(obj, "metadata")
local status = field(obj, "status")
if type(status) ~= "table" then
  return hs
end

local reason = status.reason
if type(reason) == "string" then
  hs.message = reason
else
  hs.message = ""
end

-- The status must describe the current spec: until then it says nothing about this generation.
local generation = tonumber(field(metadata, "generation"))
if generation ~= nil then
  local observed = tonumber(status.observedGeneration)
  if observed == nil or observed ~= generation then
    hs.status = "Progressing"
    hs.message = "waiting for the controller to observe generation " .. tostring(generation)
    return hs
  end
end

local ready, stalled = false, false
if type(status.conditions) == "table" then
  for _, condition in ipairs(status.conditions) do
    if type(condition) == "table" and condition.status == "True" then
      if condition.type == "Ready" then
        ready = true
      elseif condition.type == "Stalled" then
        stalled = true
      end
    end
  end
end

local phase = status.phase
if stalled or phase == "Invalid" or phase == "RolledBack" or phase == "Failed" then
  hs.status = "Degraded"
elseif phase == "Paused" then
  hs.status = "Suspended"
elseif ready then
  hs.status = "Healthy"
else
  hs.status = "Progressing"
end
return hs
