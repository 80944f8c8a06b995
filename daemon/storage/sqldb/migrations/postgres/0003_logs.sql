-- the agent log
SELECT 1;
