-- embedded vector store
SELECT 1;
