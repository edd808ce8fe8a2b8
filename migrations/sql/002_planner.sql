-- Schema additions owned by the planner service (empty until it needs some).
SELECT 1;
