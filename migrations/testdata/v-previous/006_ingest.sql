-- Schema additions owned by the ingest service (empty until it needs some).
SELECT 1;
