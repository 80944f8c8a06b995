-- workflows, instances, step runs: written with the workflow engine
SELECT 1;
