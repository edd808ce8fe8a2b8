-- Schema additions owned by the dispatcher service (empty until it needs some).
SELECT 1;
