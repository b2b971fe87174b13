-- callbridge.lua: stream this channel to callbridge, play the agent back, pass DTMF, and stay
-- until either side ends the call.
--
-- Channel variables (set them in the dialplan before the script runs):
--   callbridge_url       ws://host:8000/ws/freeswitch
--   callbridge_module    audio_fork (mod_audio_fork, drachtio's or jambonz's build) or audio_stream
--   callbridge_rate      8000 | 16000 | 24000 (the stream's rate, both directions)
--   callbridge_to        the dialled number callbridge routes on (default: destination_number)
--   callbridge_playback  auto (default) | stream | files: how agent audio comes back (see below)
--
-- How the agent's voice comes back depends on the module build:
--   stream  jambonz's mod_audio_fork started with its three bidirectional arguments plays the
--           binary frames callbridge sends straight into the call. Picked automatically when the
--           installed uuid_audio_fork lists those arguments in its usage text.
--   files   drachtio's mod_audio_fork (playAudio) and mod_audio_stream (streamAudio) write each
--           chunk of agent audio to a file and raise an event naming it; this script plays the
--           files in order with uuid_displace and tells callbridge when each one has played.
--
-- The script never blocks the channel: it waits in 20 ms session:sleep() steps, which read and
-- write the channel's media (so the module's media bug sees every frame), and polls its event
-- queue without waiting. While it sleeps it writes true silence (send_silence_when_idle=-1), which
-- the module or uuid_displace replaces with the agent's voice.

local api = freeswitch.API()
local uuid = session:get_uuid()
local BUG = "callbridge"
local STEP_MS = 20
local FINAL_PLAYOUT_MS = 10000  -- after callbridge ends the call, at most this long for the goodbye
-- The first file of a stretch of agent speech waits this long (or for the file after it) before it
-- plays, so that a file arriving late by up to this much still joins the one before it.
local CUSHION_MS = 100

local function var(name, default)
  local value = session:getVariable(name)
  if value == nil or value == "" then return default end
  return value
end

local function log(level, text)
  freeswitch.consoleLog(level, "callbridge " .. uuid .. ": " .. text .. "\n")
end

-- A JSON string with no spaces: every JSON argument must stay one API argument.
local function json_string(value)
  local s = tostring(value or "")
  s = s:gsub("\\", "\\\\"):gsub('"', '\\"'):gsub("%c", ""):gsub(" ", "\\u0020")
  return '"' .. s .. '"'
end

local function now_ms()
  return tonumber(api:getTime())
end

local url = var("callbridge_url", "ws://127.0.0.1:8000/ws/freeswitch")
local module = var("callbridge_module", "audio_fork")
local rate = tonumber(var("callbridge_rate", "8000"))
local to = var("callbridge_to", var("destination_number", ""))
local from = var("caller_id_number", "")
local playback = var("callbridge_playback", "auto")

local start, send_text, events
if module == "audio_stream" then
  if playback == "auto" then playback = "files" end
  events = {"mod_audio_stream::play", "mod_audio_stream::json", "mod_audio_stream::disconnect",
            "mod_audio_stream::error"}
  send_text = function(text) return api:executeString("uuid_audio_stream " .. uuid .. " send_text " .. text) end
else
  -- jambonz's build lists its bidirectional arguments in the API's syntax; drachtio's does not.
  local usage = api:executeString("show api uuid_audio_fork") or ""
  local bidirectional = usage:find("bidirectional", 1, true) ~= nil
  if playback == "auto" then playback = bidirectional and "stream" or "files" end
  if playback == "stream" and not bidirectional then
    log("WARNING", "this mod_audio_fork build cannot stream audio back; playing files instead")
    playback = "files"
  end
  events = {"mod_audio_fork::play_audio", "mod_audio_fork::kill_audio", "mod_audio_fork::disconnect",
            "mod_audio_fork::connect_failed", "mod_audio_fork::error"}
  send_text = function(text)
    return api:executeString("uuid_audio_fork " .. uuid .. " send_text " .. BUG .. " " .. text)
  end
  module = bidirectional and "audio_fork_bidirectional" or "audio_fork"
end

local metadata = string.format('{"to":%s,"from":%s,"uuid":%s,"sampleRate":%d,"playback":%s}',
  json_string(to), json_string(from), json_string(uuid), rate, json_string(playback))

local command
if module == "audio_stream" then
  command = string.format("uuid_audio_stream %s start %s mono %d %s", uuid, url, rate, metadata)
elseif module == "audio_fork_bidirectional" then
  -- bug name, metadata, then: bidirectional audio on; streamed (true) or played from files
  -- (false); the rate of the audio callbridge sends back, the stream's own.
  command = string.format("uuid_audio_fork %s start %s mono %d %s %s true %s %d", uuid, url, rate, BUG,
    metadata, playback == "stream" and "true" or "false", rate)
else
  command = string.format("uuid_audio_fork %s start %s mono %d %s %s", uuid, url, rate, BUG, metadata)
end

-- Subscribe before starting, so that a refusal (unknown number: close code 4004) is not missed.
local consumer = freeswitch.EventConsumer("CUSTOM", events[1])
for i = 2, #events do consumer:bind("CUSTOM", events[i]) end

session:setVariable("send_silence_when_idle", "-1")

local result = api:executeString(command)
if not result or not result:find("^%+OK") then
  log("ERR", "could not start the stream: " .. tostring(result))
  session:hangup("TEMPORARY_FAILURE")
  return
end
log("INFO", "streaming to " .. url .. " (" .. module .. ", playback " .. playback .. ")")

-- ---------------------------------------------------------------- DTMF: to callbridge as text
function callbridge_on_input(s, kind, obj)
  if kind == "dtmf" then
    send_text(string.format('{"event":"dtmf","dtmf":%s,"duration":%d}', json_string(obj.digit),
      tonumber(obj.duration) or 0))
  end
  return ""
end
session:setInputCallback("callbridge_on_input", "")

-- ---------------------------------------------------------------- file playback
local ended_at = nil  -- when the stream ended (callbridge closed it, or it failed)
local queue = {}      -- files announced by the module, oldest first: {file, mark, ms}
local current = nil   -- the file uuid_displace is playing: {file, mark, ms, ends_at}

local function file_ms(path)
  local khz = tonumber(path:match("%.r(%d+)$"))
  local f = io.open(path, "rb")
  if not f or not khz then
    if f then f:close() end
    return 0
  end
  local bytes = f:seek("end")
  f:close()
  return bytes / 2 / khz
end

local function echo_mark(mark, cleared)
  if mark then
    send_text(string.format('{"type":"mark","data":{"name":%s,"event":"%s"}}', json_string(mark),
      cleared and "cleared" or "playout"))
  end
end

-- Barge-in: stop the file and forget the queue. One "cleared" echo (the newest mark) tells
-- callbridge the script is there; it has forgotten the older marks itself.
local function stop_playback()
  local last = queue[#queue] or current
  if current then
    api:executeString("uuid_displace " .. uuid .. " stop " .. current.file)
    current = nil
  end
  queue = {}
  if last then echo_mark(last.mark, true) end
end

-- A file of n ms started at t has played at t + n. The loop wakes every 20 ms or so (a
-- session:sleep of 20 ms may span two frames), so the next file starts at the first wake-up
-- less than half a step before the end: the files join within about 10 ms.
local function advance(now)
  if current and now >= current.ends_at - STEP_MS / 2 then
    echo_mark(current.mark, false)
    current = nil
  end
  if not current and #queue > 0
      and (#queue > 1 or now - queue[1].arrived >= CUSHION_MS or ended_at) then
    current = table.remove(queue, 1)
    current.ends_at = now + current.ms
    -- mux: mixed into what the channel writes (true silence while the script sleeps); without it
    -- uuid_displace also mutes what the caller says.
    api:executeString("uuid_displace " .. uuid .. " start " .. current.file .. " 0 mux")
  end
end

-- ---------------------------------------------------------------- the call
while session:ready() do
  session:sleep(STEP_MS)
  local event = consumer:pop(0)
  while event do
    if event:getHeader("Unique-ID") == uuid then
      local subclass = event:getHeader("Event-Subclass") or ""
      local body = event:getBody() or ""
      if subclass:find("::play", 1, true) then
        local file = body:match('"file":"([^"]+)"')
        if file then
          queue[#queue + 1] = {file = file, mark = body:match('"mark":"([^"]+)"'), ms = file_ms(file),
                               arrived = now_ms()}
        end
      elseif subclass == "mod_audio_fork::kill_audio"
          or (subclass == "mod_audio_stream::json" and body:find('"killAudio"', 1, true)) then
        stop_playback()
      elseif subclass:find("::json", 1, true) then
        -- other text from callbridge: nothing to do
      elseif not ended_at then
        log("INFO", "stream ended (" .. subclass .. ") " .. body)
        ended_at = now_ms()
      end
    end
    event = consumer:pop(0)
  end
  local now = now_ms()
  advance(now)
  if ended_at and (not current or now - ended_at > FINAL_PLAYOUT_MS) then break end
end

stop_playback()
if session:ready() then session:hangup("NORMAL_CLEARING") end
