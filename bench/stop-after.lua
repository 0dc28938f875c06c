-- wrk script for bench/instructions.sh (wrk -t1 only): exits after REQUESTS responses.
-- wrk itself runs for its -d duration whatever its threads do, so the script ends the process;
-- the connections still waiting for an answer are dropped then. bench/instructions.sh counts
-- requests at the backend, not here. Any status other than 200 fails the run (exit 1).
local limit = tonumber(os.getenv("REQUESTS") or "1000")
local seen = 0

function response(status, headers, body)
  seen = seen + 1
  if status ~= 200 then
    io.write(string.format("STOP bad status %d after %d responses\n", status, seen))
    io.flush()
    os.exit(1)
  end
  if seen >= limit then
    io.write(string.format("STOP ok %d\n", seen))
    io.flush()
    os.exit(0)
  end
end
