-- Schema additions owned by the stateapi service (empty until it needs some).
SELECT 1;
