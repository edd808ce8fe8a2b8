-- Schema additions owned by the healthwatch service (empty until it needs some).
SELECT 1;
