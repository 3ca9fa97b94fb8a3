-- Argo CD health check for the cdp.dev custom resources (CustomerDataPlatform, Source,
-- MatchingPolicy, Feed, ScalingPolicy, Enricher). They all report kstatus-style conditions:
--   Ready=True        the resource is reconciled and working
--   Reconciling=True  the operator is still making progress
--   Stalled=True      it cannot progress until the spec changes (message says why)
-- plus status.observedGeneration, the metadata.generation those conditions describe.
--
-- The order of the checks follows kstatus (sigs.k8s.io/cli-utils, which Flux uses), so
-- Argo CD and Flux agree on the state of a resource:
--   1. no status, or a status about an older generation -> Progressing
--   2. Stalled=True                                      -> Degraded
--   3. Reconciling=True                                  -> Progressing
--   4. Ready=True                                        -> Healthy
--   5. anything else (Ready False/Unknown/missing)       -> Progressing
-- Argo CD runs this with gopher-lua (Lua 5.1): keep to Lua 5.1 and the base, string
-- and table libraries.

local hs = {}

local function find_condition(conditions, condition_type)
  if conditions == nil then
    return nil
  end
  for _, condition in ipairs(conditions) do
    if condition.type == condition_type then
      return condition
    end
  end
  return nil
end

local function describe(condition, fallback)
  if condition ~= nil then
    if condition.message ~= nil and condition.message ~= "" then
      return condition.message
    end
    if condition.reason ~= nil and condition.reason ~= "" then
      return condition.reason
    end
  end
  return fallback
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local observed = obj.status.observedGeneration
if observed == nil or (generation ~= nil and observed < generation) then
  hs.status = "Progressing"
  if generation ~= nil then
    hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  else
    hs.message = "Waiting for the operator to observe the latest generation"
  end
  return hs
end

local conditions = obj.status.conditions

local stalled = find_condition(conditions, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled")
  return hs
end

local reconciling = find_condition(conditions, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling, "Reconciling")
  return hs
end

local ready = find_condition(conditions, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
  return hs
end

hs.status = "Progressing"
hs.message = describe(ready, "Waiting for the Ready condition")
return hs
