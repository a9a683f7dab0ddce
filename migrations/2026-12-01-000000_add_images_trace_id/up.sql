-- The W3C trace id (32 hex digits) of the event each image was stored from: the status page shows
-- it, and a person finds the image's log lines by it (`trace.id`). Null for rows stored before.
-- No index: a lookup by trace is rare, and every insert would pay for one.
ALTER TABLE images ADD COLUMN trace_id TEXT;
