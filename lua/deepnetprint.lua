-- DeepNetPrint match: a Wireshark post-dissector that shows, for every packet dnp-scan scored, the
-- probability that the packet came from the fingerprinted device.
--
-- It reads the scores sidecar that `dnp-scan CAPTURE --fingerprint A.fp --annotate PATH` writes: a CSV
-- with the header `frame,score,target,host_match,router` and one row per scored frame (frame numbers as
-- Wireshark numbers the frames of that capture file). Frames that are not in the sidecar get nothing.
-- A sidecar of an older dnp-scan, with the header `frame,score,target` or `frame,score,target,host_match`,
-- still reads. A sidecar of this
-- dnp-scan starts with a line naming its capture (frame count, first frames' timestamps): on another
-- capture the plugin shows nothing and says so once. A frame without a sidecar row shows the score its
-- packet comment carries, as the DeepNetPrint extcap and dnp-scan --pcapng write it.
--
-- Fields (a contract with the analyst: filters, columns and `tshark -e` use them; never rename them):
--   deepnetprint         the protocol: present on every scored frame
--   deepnetprint.match   double: the best fingerprint's match probability, in [0, 1] (the full score)
--   deepnetprint.target  string: that fingerprint's name
--   deepnetprint.host_match  double: the score of the packet's sending host for its best fingerprint
--                        (dnp-scan's host score, from -1 to 1): the same on every packet of a host
--   deepnetprint.router  boolean, present (true) only where the packet's sending host is a router: its
--                        packets are not judged as a device's (dnp-scan gives it no device verdict)
--   deepnetprint.match_text  string, hidden: deepnetprint.match to 3 decimals, zeros kept (a column)
-- e.g. display filter `deepnetprint.match > 0.9`, `deepnetprint.host_match > 0.95` (every packet of a
-- matching host), `deepnetprint.host_match > 0.95 && !deepnetprint.router` (a matching device, not a
-- router), custom column `%Cus:deepnetprint.match_text`.
--
-- Where the sidecar path comes from (the first that is set):
--   the preference deepnetprint.scores_file (Preferences > Protocols > DEEPNETPRINT, or
--     tshark -o deepnetprint.scores_file:PATH);
--   the script argument scores=PATH (tshark -X lua_script:deepnetprint.lua -X lua_script1:scores=PATH);
--   the environment variable DNP_SCORES.
-- The argument and the variable become the preference's default, so the preference dialog shows the
-- path in use. Wireshark's Lua API does not say which capture file is open, so the path is not derived
-- from the capture's name.
--
-- A bad sidecar (missing, empty, wrong header, rows that are not numbers, NaN, scores outside [0, 1],
-- frames beyond the capture) is reported once (on stderr under tshark, in a dialog in the GUI); the
-- rows that are valid are still shown and dissection goes on. Bad rows and frames beyond the capture
-- make one message. A path that is not a regular file (a folder, a FIFO, a device such as /dev/zero)
-- or a file over 256 MB is refused without reading it, and nothing is shown.
--
-- Written for Lua 5.2 to 5.4 (Wireshark 4.0 to 4.4): no integer division, no bit operators, no unpack.

local PLUGIN_VERSION = "0.1.0"

if set_plugin_info then
    set_plugin_info({
        version = PLUGIN_VERSION,
        description = "DeepNetPrint match probability and host score as deepnetprint.match, .target, .host_match "
            .. "and .router",
        repository = "https://github.com/deepnetprint/deepnetprint",
    })
end

local script_args = { ... }

-- The scores= script argument, or nil (other arguments are reported, not silently ignored).
local function scores_argument()
    local found = nil
    for _, arg in ipairs(script_args) do
        local value = string.match(arg, "^scores=(.*)$")
        if value then
            found = value
        else
            report_failure("deepnetprint: unknown script argument '" .. arg .. "' (expected scores=PATH)")
        end
    end
    return found
end

-- The same plugin loaded twice (installed in the plugins folder and also given with -X lua_script)
-- would fail with "there cannot be two protocols with the same description". The copy loaded second
-- hands its scores= argument to the first one and stops; globals are shared by all Lua scripts.
local shared = rawget(_G, "deepnetprint_shared")
if shared then
    local arg_path = scores_argument()
    if arg_path and arg_path ~= "" then
        shared.arg_path = arg_path
    end
    return
end
shared = { version = PLUGIN_VERSION }
rawset(_G, "deepnetprint_shared", shared)
shared.arg_path = scores_argument()
if shared.arg_path == "" then
    shared.arg_path = nil
end

local deepnetprint = Proto("deepnetprint", "DeepNetPrint match")
local f_match = ProtoField.double("deepnetprint.match", "Match probability", "Probability that the packet "
    .. "came from the fingerprinted device (best fingerprint), from the dnp-scan scores file")
local f_target = ProtoField.string("deepnetprint.target", "Fingerprint", "Name of the fingerprint "
    .. "with the best match probability")
local f_host = ProtoField.double("deepnetprint.host_match", "Host match", "dnp-scan's score of the "
    .. "packet's sending host for its best fingerprint, from -1 to 1: the same on every packet of the host")
-- Wireshark prints a double with up to 15 significant digits and drops trailing zeros (0.91 beside
-- 0.929), in a column too; this hidden text field holds the match probability as the tree shows it, 3
-- decimals with zeros kept, for a Match column (%Cus:deepnetprint.match_text). Filters use the double.
local f_match_text = ProtoField.string("deepnetprint.match_text", "Match probability (3 decimals)",
    "The match probability to 3 decimals, zeros kept: for a Match column")
-- Added only on a router's packets (true), so the filter `deepnetprint.router` keeps them and
-- `!deepnetprint.router` the others, and other packets pay nothing for it.
local f_router = ProtoField.bool("deepnetprint.router", "Router", base.NONE, nil, nil, "The sending host "
    .. "is a router: its packets are not judged as a device's")
deepnetprint.fields = { f_match, f_target, f_host, f_match_text, f_router }

-- A packet written by the DeepNetPrint extcap (or dnp-scan --pcapng) carries its score as a packet
-- comment `deepnetprint.match=0.9312345028877258 target=cam host_match=0.987123`, ending in ` router=1` for a
-- router's packet; it is read when no sidecar row applies to the frame. The field is frame.comment from Wireshark 1.12 on (pkt_comment before).
local ok_comment, f_comment = pcall(Field.new, "frame.comment")
if not ok_comment then
    f_comment = nil
end

-- (score, target, host_match or nil, router or nil) from the frame's comments, or nil.
local function from_comment()
    if f_comment == nil then
        return nil
    end
    for _, info in ipairs({ f_comment() }) do
        local text = tostring(info.value)
        local score, rest = string.match(text, "^deepnetprint%.match=([%d%.eE+-]+) target=(.*)$")
        score = tonumber(score)
        if score ~= nil and score >= 0 and score <= 1 then
            local router = nil
            local before = string.match(rest, "^(.-) router=1$")
            if before ~= nil then
                rest, router = before, true
            end
            local target, host = string.match(rest, "^(.-) host_match=([%d%.eE+-]+)$")
            if target == nil then
                return score, rest, nil, router
            end
            return score, target, tonumber(host), router
        end
    end
    return nil
end

local env_path = os.getenv("DNP_SCORES")
if env_path == "" then
    env_path = nil
end
local default_path = shared.arg_path or env_path or ""
deepnetprint.prefs.scores_file = Pref.string("Scores file", default_path,
    "CSV written by dnp-scan --annotate (header frame,score,target,host_match,router). Default: the script argument "
    .. "scores=PATH, else the environment variable DNP_SCORES.")

-- The parsed sidecar. Wireshark calls init at the start and the end of every pass over a file, so the
-- parse is kept and redone only when the path or the file's bytes change.
local scores = {}     -- frame number -> score
local targets = {}    -- frame number -> fingerprint name
local hosts = {}      -- frame number -> its host's score (sidecars of older dnp-scan have none)
local routers = {}    -- frame number -> true where its host is a router (older sidecars: none)
local max_frame = 0   -- highest frame number in the sidecar
local loaded_path = nil
local loaded_content = nil
local last_message = nil
local held_message = nil -- tshark: a bad-rows message held to the end of the pass, see check_beyond
local max_seen = 0    -- highest frame number dissected in this pass
-- The capture the sidecar was written for (its first line `#deepnetprint frames=N first=T1,T2,T3
-- capture=NAME`; older sidecars have none and are not checked). A scores file saved as a preference
-- applies to every capture opened later: frames 1 to #id_first are checked against the recorded
-- timestamps as they are dissected, and so is any frame past id_frames.
local id_frames = math.huge
local id_first = {}
local id_name = nil
local id_check = 0     -- the dissector checks frames up to this number, and beyond id_frames
local refused = false  -- this sidecar was refused for the capture at hand; nothing is shown

local function tell(msg)
    -- Once per distinct message: init runs several times per file and must not repeat itself.
    if msg ~= last_message then
        last_message = msg
        report_failure("deepnetprint: " .. msg)
    end
end

-- One CSV record starting at pos: its fields and the position after it, or nil and a reason.
-- Quoted fields may hold commas, doubled quotes and line breaks (RFC 4180).
local function parse_record(s, pos)
    local fields = {}
    local n = #s
    while true do
        if string.sub(s, pos, pos) == '"' then
            local parts = {}
            local i = pos + 1
            while true do
                local q = string.find(s, '"', i, true)
                if not q then
                    return nil, "a quote is not closed"
                end
                parts[#parts + 1] = string.sub(s, i, q - 1)
                if string.sub(s, q + 1, q + 1) == '"' then
                    parts[#parts + 1] = '"'
                    i = q + 2
                else
                    pos = q + 1
                    break
                end
            end
            fields[#fields + 1] = table.concat(parts)
            local c = string.sub(s, pos, pos)
            if c == "," then
                pos = pos + 1
            elseif c == "\n" then
                return fields, pos + 1
            elseif c == "\r" then
                if string.sub(s, pos + 1, pos + 1) == "\n" then
                    return fields, pos + 2
                end
                return fields, pos + 1
            elseif c == "" then
                return fields, n + 1
            else
                return nil, "text after a closing quote"
            end
        else
            local e = string.find(s, "[,\r\n]", pos)
            if not e then
                fields[#fields + 1] = string.sub(s, pos)
                return fields, n + 1
            end
            fields[#fields + 1] = string.sub(s, pos, e - 1)
            local c = string.sub(s, e, e)
            if c == "," then
                pos = e + 1
            elseif c == "\r" and string.sub(s, e + 1, e + 1) == "\n" then
                return fields, e + 2
            else
                return fields, e + 1
            end
        end
    end
end

-- Parse the sidecar's text into fresh tables; the message (or nil) says what was wrong with it.
local function parse_sidecar(content, path)
    local new_scores, new_targets, new_hosts, new_routers, top = {}, {}, {}, {}, 0
    if content == "" then
        return new_scores, new_targets, new_hosts, new_routers, top,
            path .. " is empty (no header frame,score,target,host_match,router)"
    end
    local pos = 1
    if string.sub(content, 1, 3) == "\239\187\191" then
        pos = 4 -- a UTF-8 byte order mark, as spreadsheets write it
    end
    local identity = nil
    if string.sub(content, pos, pos) == "#" then
        local line_end = string.find(content, "\n", pos, true) or (#content + 1)
        local line = string.gsub(string.sub(content, pos, line_end - 1), "\r$", "")
        local frames, first, name = string.match(line, "^#deepnetprint frames=(%d+) first=([%d.,]*) capture=(.*)$")
        if not frames then
            return new_scores, new_targets, new_hosts, new_routers, top,
                path .. ": line 1 is not #deepnetprint frames=N first=T1,... capture=NAME", nil
        end
        identity = { frames = tonumber(frames), first = {}, name = name }
        for t in string.gmatch(first, "[^,]+") do
            identity.first[#identity.first + 1] = tonumber(t)
        end
        pos = line_end + 1
    end
    local header, after = parse_record(content, pos)
    if not header or #header < 3 or #header > 5 or header[1] ~= "frame" or header[2] ~= "score"
        or header[3] ~= "target" or (#header >= 4 and header[4] ~= "host_match")
        or (#header == 5 and header[5] ~= "router") then
        return new_scores, new_targets, new_hosts, new_routers, top,
            path .. " does not start with the header frame,score,target,host_match,router", identity
    end
    local width = #header
    local fast = '^(%d+),([-+%d.eE]+),([^,"\r\n]*)\r?\n()'
    if width == 4 then
        fast = '^(%d+),([-+%d.eE]+),([^,"\r\n]*),([-+%d.eE]*)\r?\n()'
    elseif width == 5 then
        fast = '^(%d+),([-+%d.eE]+),([^,"\r\n]*),([-+%d.eE]*),(1?)\r?\n()'
    end
    pos = after
    local n = #content
    local bad, first_bad = 0, nil
    -- The physical line a row starts on, for the message (a quoted name may span lines).
    local function line_of(at)
        local _, breaks = string.gsub(string.sub(content, 1, at - 1), "\n", "")
        return breaks + 1
    end
    while pos <= n do
        local row_start = pos
        -- The common row (a number, a number, a name without commas or quotes) in one anchored match
        -- and no table; anything else, or anything the fast path would refuse, goes the long way.
        local f1, f2, f3, f4, f5, next_pos = string.match(content, fast, pos)
        if width == 3 then
            f4, f5, next_pos = nil, nil, f4
        elseif width == 4 then
            f5, next_pos = nil, f5
        end
        local frame, score = f1 and tonumber(f1), f2 and tonumber(f2)
        local host = f4 and f4 ~= "" and tonumber(f4)
        if frame and score and frame >= 1 and score >= 0 and score <= 1 and not new_scores[frame]
            and (not f4 or f4 == "" or (host and host >= -1 and host <= 1)) then
            pos = next_pos
            new_scores[frame] = score
            new_targets[frame] = f3
            new_hosts[frame] = host or nil
            new_routers[frame] = (f5 == "1") or nil
            if frame > top then
                top = frame
            end
        else
            local reason = nil
            local record
            record, next_pos = parse_record(content, pos)
            if not record then
                -- An unclosed quote swallows the rest of the file: stop there.
                bad = bad + 1
                first_bad = first_bad or ("line " .. line_of(row_start) .. ": " .. next_pos)
                break
            end
            pos = next_pos
            f1, f2, f3, f4, f5 = record[1], record[2], record[3], record[4] or "", record[5] or ""
            frame, score, host = nil, nil, nil
            if #record == 1 and f1 == "" then
                reason = nil -- a blank line is not a row
            elseif #record ~= width then
                reason = #record .. " fields instead of " .. width
            else
                if f4 ~= "" and string.match(f4, "^%s*[-+]?[%d.]+[eE]?[-+]?%d*%s*$") then
                    host = tonumber(f4)
                end
                if string.match(f1, "^%d+$") then
                    frame = tonumber(f1)
                end
                if string.match(f2, "^%s*[-+]?[%d.]+[eE]?[-+]?%d*%s*$") then
                    score = tonumber(f2)
                end
                if not frame or frame < 1 then
                    reason = "frame '" .. f1 .. "' is not a frame number"
                elseif not score or score ~= score then
                    reason = "score '" .. f2 .. "' is not a number"
                elseif score < 0 or score > 1 then
                    reason = "score " .. f2 .. " is outside [0, 1]"
                elseif f4 ~= "" and (not host or host ~= host or host < -1 or host > 1) then
                    reason = "host_match '" .. f4 .. "' is not a score in [-1, 1]"
                elseif f5 ~= "" and f5 ~= "1" then
                    reason = "router '" .. f5 .. "' is not 1 or empty"
                elseif new_scores[frame] then
                    reason = "frame " .. f1 .. " is listed twice"
                else
                    new_scores[frame] = score
                    new_targets[frame] = f3
                    new_hosts[frame] = host
                    new_routers[frame] = (f5 == "1") or nil
                    if frame > top then
                        top = frame
                    end
                end
            end
            if reason then
                bad = bad + 1
                first_bad = first_bad or ("line " .. line_of(row_start) .. ": " .. reason)
            end
        end
    end
    local msg = nil
    if bad > 0 then
        msg = path .. ": " .. bad .. " bad row(s) skipped, first at " .. first_bad
    end
    return new_scores, new_targets, new_hosts, new_routers, top, msg, identity
end

local function scores_path()
    local path = deepnetprint.prefs.scores_file
    -- A scores= argument from a second copy of the plugin arrives after the preference was
    -- registered: it wins while the preference still holds its default.
    if path == default_path and shared.arg_path then
        path = shared.arg_path
    end
    return path
end

-- A sidecar is a few MB per 100,000 frames; anything larger is not one, and reading it would only
-- fill memory.
local MAX_SIDECAR_BYTES = 256 * 1024 * 1024
local READ_BLOCK = 1024 * 1024

-- The sidecar's bytes, or nil and the message. Lua has no stat(), so the file's kind shows through
-- what it allows: opened for update, a folder fails ("Is a directory") and a FIFO opens without
-- waiting for a writer (opened read-only it would hang tshark); a FIFO or a socket cannot seek; and a
-- device such as /dev/zero gives more bytes than its size. The update mode writes nothing; where it
-- is refused (a file without write permission, a read-only file system) a plain read-only open follows.
local function read_sidecar(path)
    local file, err = io.open(path, "r+b")
    if not file and err and string.find(err, "Is a directory", 1, true) then
        return nil, path .. " is a folder, not a scores file"
    end
    if not file then
        file, err = io.open(path, "rb")
    end
    if not file then
        return nil, "cannot read the scores file: " .. tostring(err)
    end
    local size = file:seek("end")
    if not size then
        file:close()
        return nil, path .. " is not a regular file (a FIFO or a socket?): not read"
    end
    if size > MAX_SIDECAR_BYTES then
        file:close()
        return nil, path .. " is larger than " .. string.format("%d", MAX_SIDECAR_BYTES / 1048576) .. " MB: not a scores file"
    end
    file:seek("set")
    local parts, total = {}, 0
    while true do
        local block, read_err = file:read(READ_BLOCK)
        if not block then
            if read_err then
                file:close()
                return nil, "cannot read the scores file " .. path .. ": " .. tostring(read_err)
            end
            break
        end
        total = total + #block
        if total > size then
            file:close()
            return nil, path .. " is not a regular file (it gives more bytes than its size): not read"
        end
        parts[#parts + 1] = block
    end
    file:close()
    return table.concat(parts)
end

local function load_sidecar()
    local path = scores_path()
    if path == nil or path == "" then
        scores, targets, hosts, routers, max_frame = {}, {}, {}, {}, 0
        loaded_path, loaded_content = path, nil
        id_frames, id_first, id_name, id_check = math.huge, {}, nil, 0
        return
    end
    local content, err = read_sidecar(path)
    if not content then
        scores, targets, hosts, routers, max_frame = {}, {}, {}, {}, 0
        loaded_path, loaded_content = path, nil
        id_frames, id_first, id_name, id_check = math.huge, {}, nil, 0
        tell(err)
        return
    end
    if path == loaded_path and content == loaded_content then
        return
    end
    local msg, identity
    scores, targets, hosts, routers, max_frame, msg, identity = parse_sidecar(content, path)
    loaded_path, loaded_content = path, content
    if identity then
        id_frames, id_first, id_name = identity.frames, identity.first, identity.name
    else
        id_frames, id_first, id_name = math.huge, {}, nil
    end
    id_check = #id_first
    if msg and not (gui_enabled and gui_enabled()) then
        -- Under tshark the end of the pass may add frames beyond the capture: one message says both.
        held_message = msg
    elseif msg then
        tell(msg)
    else
        last_message = nil -- fixed: the same fault later is news again
    end
end

-- Say that the sidecar lists frames the capture does not have (most likely it is the sidecar of another
-- capture). Wireshark calls init again after the last packet, so that is where this runs; not in the
-- GUI, which also calls init when a load is cut short. (A tap's draw would be the natural place, but a
-- Lua tap listener made tshark 0.45 s slower per 175,000 packets.)
local function check_beyond()
    local held = held_message
    held_message = nil
    if max_seen == 0 or max_frame <= max_seen or (gui_enabled and gui_enabled()) then
        if held then
            tell(held)
        end
        return
    end
    local beyond = 0
    for frame in pairs(scores) do
        if frame > max_seen then
            beyond = beyond + 1
        end
    end
    local msg = beyond .. " scored frame(s) beyond the last frame read (" .. max_seen .. "), up to frame "
        .. max_frame .. ": is it the scores file of this capture?"
    if held then
        tell(held .. "; " .. msg)
    else
        tell(loaded_path .. ": " .. msg)
    end
end

-- The sidecar belongs to another capture: show nothing from it, say so once. Parsed again at the next
-- init, so opening the right capture shows its scores.
local function refuse(why)
    scores, targets, hosts, routers, max_frame = {}, {}, {}, {}, 0
    loaded_content = nil
    held_message = nil
    refused = true
    id_check, id_frames = 0, math.huge
    tell(loaded_path .. " holds the scores of " .. (id_name ~= "" and id_name or "another capture")
        .. ", not of this one (" .. why .. "): no scores shown")
end

-- Frame `frame` of the capture at hand against the sidecar's identity.
local function check_identity(frame, pinfo)
    if frame > id_frames then
        refuse("it has more than the " .. string.format("%d", id_frames) .. " frames scored")
        return
    end
    local want = id_first[frame]
    local got = pinfo.abs_ts
    -- Decimal seconds read as doubles are about 0.24 microseconds apart at today's epoch seconds.
    if want and math.abs(got - want) > 2e-6 then
        refuse(string.format("frame %d is at %.6f, the scored capture's at %.6f", frame, got, want))
    end
end

function deepnetprint.init()
    check_beyond()
    max_seen = 0
    if refused then
        refused = false
        last_message = nil -- the same wrong file on the next capture is news again
    end
    -- A Lua error here would stop every later dissection: any surprise becomes one message.
    local ok, err = pcall(load_sidecar)
    if not ok then
        scores, targets, hosts, routers, max_frame = {}, {}, {}, {}, 0
        tell("could not load the scores file: " .. tostring(err))
    end
end

-- The fields hold the full score (the sidecar's, the comment's), so a filter compares what dnp-scan
-- computed: `deepnetprint.match > 0.9` keeps a frame scored 0.900129. People read 3 decimals, zeros
-- kept: the tree's labels and deepnetprint.match_text.
local format = string.format

function deepnetprint.dissector(tvb, pinfo, tree)
    local frame = pinfo.number
    if frame > max_seen then
        max_seen = frame
    end
    if frame <= id_check or frame > id_frames then
        check_identity(frame, pinfo)
    end
    local score = scores[frame]
    local target, host, router = targets[frame], hosts[frame], routers[frame]
    if score == nil then
        score, target, host, router = from_comment()
        if score == nil then
            return
        end
    end
    -- Each call through the Lua API costs microseconds, paid on every scored packet: measured on
    -- 175,000 of them, a label with the values cost about 1.4 s more, set_generated() on the two fields
    -- and a tree.visible test about 1.5 s. So the subtree keeps its plain name and the fields carry
    -- the values.
    local item = tree:add(deepnetprint)
    local text = format("%.3f", score)
    item:add(f_match, score, "Match probability: " .. text)
    item:add(f_match_text, text):set_hidden()
    item:add(f_target, target)
    if host ~= nil then
        item:add(f_host, host, format("Host match: %.3f (the host's score, from -1 to 1)", host))
    end
    if router then
        item:add(f_router, true, "Router: the sending host forwards other hosts' packets (not judged as a device)")
    end
end

register_postdissector(deepnetprint)
