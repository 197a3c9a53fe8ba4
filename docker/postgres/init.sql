-- Run once by the postgres image on an empty data volume (docker-entrypoint-initdb.d), as the
-- POSTGRES_USER of docker/compose.yaml. The Prefect server uses the database POSTGRES_DB (prefect);
-- the mock chain of `t2vsim network run --db ...` and the network-epochs/postgres deployment uses
-- `chain`. A chain needs an empty database: make one per run with
--   docker compose -f docker/compose.yaml exec postgres createdb -U t2vsim chain_2
CREATE DATABASE chain OWNER t2vsim;
