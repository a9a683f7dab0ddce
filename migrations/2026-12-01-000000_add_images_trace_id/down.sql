ALTER TABLE images DROP COLUMN trace_id;
