-- callbridge.lua: stream this channel's audio to callbridge and stay until the stream ends.
--
-- Channel variables (set them in the dialplan before calling the script):
--   callbridge_url     ws://host:8000/ws/freeswitch
--   callbridge_module  audio_fork (jambonz mod_audio_fork, bidirectional streaming) or audio_stream
--   callbridge_rate    8000 | 16000 | 24000 (both directions)
--   callbridge_to      the dialled number callbridge routes on (default: destination_number)
--
-- The commands it runs, for a channel <uuid> (the same ones an administrator can type in fs_cli):
--   uuid_audio_fork <uuid> start <url> mono <rate> callbridge <metadata> true true <rate>
--   uuid_audio_stream <uuid> start <url> mono <rate> <metadata>
-- where <metadata> is compact JSON without spaces (the API splits its arguments on spaces):
--   {"to":"+5511999990001","from":"+5511988887777","uuid":"<uuid>","sampleRate":16000}

local api = freeswitch.API()
local uuid = session:get_uuid()

local function var(name, default)
  local value = session:getVariable(name)
  if value == nil or value == "" then return default end
  return value
end

-- A JSON string with no spaces: the metadata must stay one API argument.
local function json_string(value)
  local s = tostring(value or "")
  s = s:gsub("\\", "\\\\"):gsub('"', '\\"'):gsub("%c", ""):gsub(" ", "\\u0020")
  return '"' .. s .. '"'
end

local url = var("callbridge_url", "ws://127.0.0.1:8000/ws/freeswitch")
local module = var("callbridge_module", "audio_fork")
local rate = tonumber(var("callbridge_rate", "8000"))
local to = var("callbridge_to", var("destination_number", ""))
local from = var("caller_id_number", "")

local metadata = string.format('{"to":%s,"from":%s,"uuid":%s,"sampleRate":%d}',
  json_string(to), json_string(from), json_string(uuid), rate)

local command, events
if module == "audio_stream" then
  command = string.format("uuid_audio_stream %s start %s mono %d %s", uuid, url, rate, metadata)
  events = {"mod_audio_stream::disconnect", "mod_audio_stream::error"}
else
  -- Arguments after the metadata: bidirectional audio on, streamed (not file playback), at the
  -- stream's own rate.
  command = string.format("uuid_audio_fork %s start %s mono %d callbridge %s true true %d",
    uuid, url, rate, metadata, rate)
  events = {"mod_audio_fork::disconnect", "mod_audio_fork::connect_failed", "mod_audio_fork::error"}
end

-- Subscribe before starting, so a refusal (unknown number: close code 4004) is not missed.
local consumer = freeswitch.EventConsumer("CUSTOM", events[1])
for i = 2, #events do consumer:bind("CUSTOM", events[i]) end

local result = api:executeString(command)
if not result or not result:find("^%+OK") then
  freeswitch.consoleLog("ERR", "callbridge: could not start the stream: " .. tostring(result) .. "\n")
  session:hangup("TEMPORARY_FAILURE")
  return
end

while session:ready() do
  local event = consumer:pop(1, 500)
  if event and event:getHeader("Unique-ID") == uuid then
    freeswitch.consoleLog("INFO", "callbridge: stream ended (" .. tostring(event:getHeader("Event-Subclass")) .. ")\n")
    break
  end
end

if session:ready() then session:hangup("NORMAL_CLEARING") end
